"""One rule for every command's outputs (issue 27): nothing is replaced without --overwrite, and
each command checks before any work (here, before a model loads or a photo is read)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from carmask.cli import app


def run(*args: str):
    return CliRunner().invoke(app, [*map(str, args)])


@pytest.fixture
def existing(tmp_path):
    """An output that is there already, with contents that must survive."""
    def make(relative: str):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("precious")
        return path
    return make


def cases(tmp_path, existing, carvana):
    photo = sorted((carvana / "test").glob("*.jpg"))[0]
    sample = carvana / "sample_submission.csv"
    return {
        "submission merge": (["submission", "merge", existing("a.csv"), "--sample", sample,
                              "--out", existing("merged.csv")], tmp_path / "merged.csv"),
        "rle decode": (["rle", "decode", "1 5", "--out", existing("mask.png")], tmp_path / "mask.png"),
        "eda": (["eda", "--data", carvana, "--out", tmp_path / "eda"], existing("eda/index.html")),
        "evaluate": (["evaluate", "--data", carvana, "--cars", "val", "--out", tmp_path / "ev"],
                     existing("ev/per_image.csv")),
        "data synth": (["data", "synth", "--out", tmp_path / "synth", "--cars", "1"],
                       existing("synth/.carmask-synth")),
        "predict --masks-dir": (["predict", photo, "--masks-dir", tmp_path / "masks"],
                                existing(f"masks/{photo.stem}_mask.png")),
        "export": (["export", "--model", "studio", "--out", existing("model.onnx")], tmp_path / "model.onnx"),
        "average": (["average", "studio", "studio", "--out", existing("soup.safetensors")],
                    tmp_path / "soup.safetensors"),
    }


@pytest.mark.parametrize("command", ["submission merge", "rle decode", "eda", "evaluate",
                                     "data synth", "predict --masks-dir", "export", "average"])
def test_no_command_replaces_an_output_without_overwrite(command, tmp_path, existing, carvana):
    args, output = cases(tmp_path, existing, carvana)[command]
    result = run(*args)
    assert result.exit_code == 1, result.output
    assert "--overwrite" in result.output and "exists" in result.output
    assert output.read_text() == "precious"  # untouched
    assert "Traceback" not in result.output


def test_overwrite_replaces(tmp_path, carvana):
    out = tmp_path / "mask.png"
    out.write_text("old")
    assert run("rle", "decode", "1 5", "--out", out).exit_code == 1
    assert run("rle", "decode", "1 5", "--out", out, "--overwrite").exit_code == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
