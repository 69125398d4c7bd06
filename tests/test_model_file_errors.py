"""Bad model files and bad training, export, EDA and synth arguments (issue 27, third round).

1. A model file with NaN or damaged weights masked nothing with exit 0, and `carmask average`
   took it in. Every model file is now checked when loaded: a shipped one against the SHA-256 in
   weights/models.json, one carmask wrote against the checksum in its metadata, every one for
   finite weights; and nothing non-finite is ever saved or exported.
2. `carmask train` (and train-refiner, train-general) took bad numbers, devices, accelerators,
   durations and run folders, and failed minutes later with a traceback, or never.
3. export, average, eda and data synth: bad --out paths and huge sizes, refused before any work.

Everything here runs on a 650k-parameter seed-cnn made in a second; no training.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from carmask.cli import app
from carmask.inference import model_check, model_files
from carmask.inference.model_check import verify_model_file
from carmask.inference.model_files import CHECKSUM_KEY, ModelFileError

pytestmark = pytest.mark.filterwarnings("ignore")
SIZE = (64, 96)


class WorkStarted(BaseException):
    """Raised where a command's real work would begin (no `except Exception` swallows it)."""


def _tripwire(*args, **kwargs):
    raise WorkStarted()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A folder with a tiny model as carmask writes it (a.safetensors, a.onnx, a16.onnx), a
    second one (b.safetensors) and a photo."""
    from carmask.training.export import export_model_file
    from carmask.training.models import create_bare_model
    from carmask.training.models.io import model_config, save_model

    folder = tmp_path_factory.mktemp("tiny")
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        save_model(create_bare_model("seed-cnn"), folder / f"{name}.safetensors",
                   model_config("seed-cnn", SIZE))
    export_model_file(folder / "a.safetensors", folder / "a.onnx")
    export_model_file(folder / "a.safetensors", folder / "a16.onnx", fp16=True)
    Image.fromarray(np.full((*SIZE, 3), 128, np.uint8)).save(folder / "photo.jpg")
    return folder


@pytest.fixture(scope="module")
def nan_files(tiny) -> dict[str, Path]:
    """Model files with a NaN weight and no checksum: what a diverged run wrote before."""
    import onnx
    from onnx import numpy_helper
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny / "a.safetensors"))
    state["encoder.blocks.0.1.weight"].view(-1)[0] = float("nan")
    config = model_files.read_config(tiny / "a.safetensors")
    save_file(state, str(tiny / "nan.safetensors"), metadata={"carmask": json.dumps(config)})
    graph = onnx.load(str(tiny / "a.onnx"))
    weight = next(w for w in graph.graph.initializer if len(w.dims) == 4)
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] = np.inf
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    entries = [entry for entry in graph.metadata_props if entry.key != CHECKSUM_KEY]
    del graph.metadata_props[:]
    graph.metadata_props.extend(entries)
    onnx.save(graph, str(tiny / "nan.onnx"))
    return {".safetensors": tiny / "nan.safetensors", ".onnx": tiny / "nan.onnx",
            "weight": {".safetensors": "encoder.blocks.0.1.weight", ".onnx": weight.name}}


def flipped(source: Path, out: Path) -> Path:
    """A copy of `source` with one bit flipped amid its weights: a damaged download or disk."""
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0x04
    out.write_bytes(bytes(data))
    return out


def run(*args: str):
    try:
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})
    except WorkStarted as started:
        return started


def refusal(result) -> str:
    """The one `error: ...` line of a refused command (exit 1 or 2, no traceback)."""
    assert not isinstance(result, WorkStarted), "accepted: the work started"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (1, 2), result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- 1. model files ----------------------------------------------------------------------------
def test_carmask_writes_a_checksum_into_every_model_file_and_loads_it(tiny):
    from carmask.inference.onnx_model import OnnxModel
    from carmask.training.models.io import load_model
    from safetensors import safe_open

    with safe_open(str(tiny / "a.safetensors"), framework="numpy") as file:
        assert len(file.metadata()[CHECKSUM_KEY]) == 64
    for name in ("a.onnx", "a16.onnx"):
        recorded, actual = model_check._onnx_checksum(tiny / name, memoryview((tiny / name).read_bytes()))
        assert recorded == actual and len(recorded) == 64
        output = OnnxModel(tiny / name)(np.zeros((1, 3, *SIZE), np.float32))
        assert output.shape == (1, 1, *SIZE) and np.isfinite(output).all()
    assert model_files.read_config(tiny / "a.onnx")["architecture"] == "seed-cnn"
    load_model(tiny / "a.safetensors")  # verified, then loaded


def test_the_checksum_leaves_the_config_out_so_it_can_be_edited(tiny, tmp_path):
    import onnx

    graph = onnx.load(str(tiny / "a.onnx"))
    entry = next(entry for entry in graph.metadata_props if entry.key == "carmask")
    entry.value = json.dumps(dict(json.loads(entry.value), threshold=0.4))
    onnx.save(graph, str(tmp_path / "edited.onnx"))  # the checksum entry moves among the others
    verify_model_file(tmp_path / "edited.onnx")
    assert model_files.read_config(tmp_path / "edited.onnx")["threshold"] == 0.4


@pytest.mark.parametrize("name", ["a.safetensors", "a.onnx", "a16.onnx"])
def test_a_damaged_model_file_is_refused_naming_it(tiny, tmp_path, name):
    damaged = flipped(tiny / name, tmp_path / f"damaged{Path(name).suffix}")
    with pytest.raises(ModelFileError, match="damaged.* checksum mismatch: the file was changed"):
        verify_model_file(damaged)
    result = run("predict", str(tiny / "photo.jpg"), "--model", str(damaged),
                 "--masks-dir", str(tmp_path / "masks"))
    assert str(damaged) in refusal(result) and "checksum mismatch" in result.stderr
    assert not (tmp_path / "masks").exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".onnx"])
def test_a_model_file_with_non_finite_weights_is_refused_naming_the_weight(nan_files, tmp_path,
                                                                          suffix):
    """Files without a checksum (from before) still get the finite check."""
    path, weight = nan_files[suffix], nan_files["weight"][suffix]
    holds = "NaN" if suffix == ".safetensors" else "an infinite value"
    with pytest.raises(ModelFileError, match=f"{path.name}: weight '{weight}' holds {holds}"):
        verify_model_file(path)
    result = run("predict", str(path.parent / "photo.jpg"), "--model", str(path),
                 "--masks-dir", str(tmp_path / "masks"))
    assert f"{path}: weight '{weight}' holds {holds}" in refusal(result)
    assert not (tmp_path / "masks").exists()
    if suffix == ".safetensors":  # the torch side (training, the torch backend) refuses it too
        from carmask.training.models.io import load_model
        with pytest.raises(ModelFileError, match="holds NaN"):
            load_model(path)


def test_average_refuses_a_non_finite_or_damaged_input_before_writing(tiny, nan_files, tmp_path):
    out = tmp_path / "soup.safetensors"
    damaged = flipped(tiny / "b.safetensors", tmp_path / "damaged.safetensors")
    for bad, problem in ((nan_files[".safetensors"], "holds NaN"), (damaged, "checksum mismatch")):
        result = run("average", str(tiny / "a.safetensors"), str(bad), "--out", str(out))
        assert str(bad) in refusal(result) and problem in result.stderr
        assert not out.exists()
    assert run("average", str(tiny / "a.safetensors"), str(tiny / "b.safetensors"),
               "--out", str(out)).exit_code == 0
    verify_model_file(out)  # the soup carries its own checksum


def test_non_finite_weights_are_never_saved_or_exported(tiny, tmp_path):
    from carmask.training.export import export_onnx
    from carmask.training.models.io import load_model, save_model

    model, config = load_model(tiny / "a.safetensors")
    with torch.no_grad():
        model.state_dict()["encoder.blocks.0.1.weight"].view(-1)[0] = float("nan")
    for write in (lambda path: save_model(model, path, config),
                  lambda path: export_onnx(model, path, SIZE, config=config)):
        path = tmp_path / "out" / "diverged.model"
        with pytest.raises(ModelFileError, match="not written: weight 'encoder.blocks.0.1.weight' "
                                                 "holds NaN"):
            write(path)
        assert not path.exists()
    # fp16 holds at most 65504: a larger weight would be stored as infinity
    with torch.no_grad():
        model.state_dict()["encoder.blocks.0.1.weight"].view(-1)[0] = 1e6
    with pytest.raises(ModelFileError, match="beyond fp16's range"):
        save_model(model, tmp_path / "big.safetensors", config, half=True)
    with pytest.raises(ModelFileError, match="not written: weight .* holds an infinite value"):
        export_onnx(model, tmp_path / "big.onnx", SIZE, fp16=True, config=config)
    assert not (tmp_path / "big.safetensors").exists() and not (tmp_path / "big.onnx").exists()


def test_the_shipped_files_match_the_checksums_recorded_for_them():
    recorded = json.loads((model_files.WEIGHTS / "models.json").read_text())
    for path in model_files.SHIPPED.values():  # each model ships as ONNX and as torch's weights
        assert set(recorded[path.stem]["sha256"]) == {"onnx", "safetensors"}, path
    for stem, entry in recorded.items():
        for suffix, digest in entry["sha256"].items():
            path = model_files.WEIGHTS / f"{stem}.{suffix}"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path
            verify_model_file(path)
    for entry in recorded.values():  # a shipped refiner or best file is recorded as they are
        for key in ("refiner", "best"):
            named = model_files.WEIGHTS / entry.get(key, "-")
            if named.is_file():
                assert "onnx" in recorded.get(named.stem, {}).get("sha256", {}), \
                    f"{named}: no SHA-256 in models.json"


def test_a_damaged_cached_export_is_made_again(tiny, tmp_path, monkeypatch):
    """The ONNX export of a .safetensors file lives in carmask's cache: a damaged one is carmask's
    to remake, not the user's problem."""
    monkeypatch.setattr(model_files, "CACHE", tmp_path / "cache")
    cached = model_files.onnx_file(tiny / "a.safetensors")
    damaged = flipped(cached, cached).read_bytes()
    with pytest.raises(ModelFileError):
        verify_model_file(cached)
    assert model_files.onnx_file(tiny / "a.safetensors") == cached
    assert cached.read_bytes() != damaged and verify_model_file(cached)


def test_a_damaged_shipped_file_says_to_reinstall(tiny, tmp_path, monkeypatch):
    """The shipped files have no checksum inside (they predate it): weights/models.json has it."""
    weights = tmp_path / "weights"
    weights.mkdir()
    shipped = weights / "carvana-unet-mnv2.onnx"
    shutil.copy(tiny / "a.onnx", shipped)
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
    (weights / "models.json").write_text(json.dumps({"carvana-unet-mnv2": {"sha256": {"onnx": digest}}}))
    monkeypatch.setattr(model_files, "WEIGHTS", weights)
    verify_model_file(shipped)
    flipped(tiny / "a.onnx", shipped)
    (tmp_path / "link.onnx").symlink_to(shipped)  # a link to a shipped file is checked as one
    for path in (shipped, tmp_path / "link.onnx"):
        with pytest.raises(ModelFileError, match="shipped model file was changed or damaged .*reinstall"):
            verify_model_file(path)


# -- 2. training options -------------------------------------------------------------------------
ENTRY_POINTS = {"train": "carmask.training.train.train",
                "train-refiner": "carmask.training.refiner_train.train_refiner",
                "train-general": "carmask.training.general.train_anywhere"}


@pytest.fixture
def no_training(monkeypatch):
    for target in ENTRY_POINTS.values():
        monkeypatch.setattr(target, _tripwire)


@pytest.mark.parametrize(("command", "option", "value"), [
    ("train", "--epochs", "-1"), ("train", "--epochs", "0"), ("train", "--devices", "abc"),
    ("train", "--devices", "0"), ("train", "--accelerator", "tpu"), ("train", "--precision", "8"),
    ("train", "--max-time", "garbage"), ("train", "--max-time", "12:00"),
    ("train", "--max-time", "00:00:00:00"), ("train", "--out", "{file}"),
    ("train", "--out", "{file}/run"), ("train", "--fold", "5"), ("train", "--val-every", "0"),
    ("train", "--init", "{file}"), ("train", "--val-cars", "bogus"), ("train", "--cache", "{file}"),
    ("train-refiner", "--epochs", "0"), ("train-refiner", "--max-time", "garbage"),
    ("train-refiner", "--out", "{file}"), ("train-refiner", "--train-cars", "car1"),
    ("train-refiner", "--coarse", "{file}"),
    ("train-general", "--max-time", "garbage"), ("train-general", "--out", "{file}"),
    ("train-general", "--init", "{file}"), ("train-general", "--wild", "{folder}"),
])
def test_a_bad_training_option_is_one_line_before_any_work(no_training, tmp_path, command, option,
                                                           value):
    (tmp_path / "notes.txt").write_text("not a model, not a folder\n")
    value = value.format(file=tmp_path / "notes.txt", folder=tmp_path)
    result = run(command, "--data", str(tmp_path), "--out", str(tmp_path / "run"), option, value)
    line = refusal(result)
    assert option in line or (len(value) > 3 and value in line), line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["00:12:00:00", "2:00:30:00"])
def test_max_time_takes_lightnings_format(no_training, tmp_path, value):
    result = run("train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--max-time", value)
    assert isinstance(result, WorkStarted), result.output


# -- 3. outputs and sizes of export, average, eda, data synth -----------------------------------
@pytest.fixture
def world(tiny, tmp_path, monkeypatch) -> Path:
    """tmp_path with a file, a folder, an unwritable folder, and no work allowed."""
    (tmp_path / "notes.txt").write_text("x\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "locked").mkdir()
    (tmp_path / "data" / "train").mkdir(parents=True)
    import carmask.util.output_files as output_files
    access = output_files.os.access  # root may write anywhere: the folder says it is read-only
    monkeypatch.setattr(output_files.os, "access",
                        lambda path, mode: access(path, mode) and Path(path) != tmp_path / "locked")
    for target in ("carmask.training.export.export_model_file", "carmask.apps.eda.write_eda_report",
                   "carmask.training.models.io.average_models", "carmask.data.synth.synthesize"):
        monkeypatch.setattr(target, _tripwire)
    return tmp_path


CASES = {
    "export": ["export", "--model", "{tiny}/a.safetensors", "--out", "{out}"],
    "average": ["average", "{tiny}/a.safetensors", "{tiny}/b.safetensors", "--out", "{out}"],
    "eda": ["eda", "--data", "{world}/data", "--out", "{out}"],
    "data synth": ["data", "synth", "--out", "{out}", "--cars", "1", "--test-cars", "0"],
}
FILE_OUTS = ["{world}/folder", "{world}/notes.txt/x.onnx", "{world}/locked/x.onnx"]
FOLDER_OUTS = ["{world}/notes.txt", "{world}/notes.txt/out", "{world}/locked/out"]


def _bad_outputs():
    for command in CASES:
        for out, what in zip(FILE_OUTS if command in ("export", "average") else FOLDER_OUTS,
                             ("wrong kind", "under a file", "read-only parent")):
            yield pytest.param(command, out, [], id=f"{command}: --out {what}")
    more = [("export", "{world}/model.safetensors", [], "--out not .onnx"),
            ("average", "{world}/soup.onnx", [], "--out .onnx"),
            ("eda", "{world}/report", ["--overwrite"], "--out/index.html a folder"),
            ("export", "{world}/x.onnx", ["--size", "100000x100000"], "huge --size"),
            ("average", "{world}/x.safetensors", ["--size", "100000x100000"], "huge --size"),
            ("data synth", "{world}/synth", ["--size", "100000x100000"], "huge --size"),
            ("data synth", "{world}/synth", ["--cars", str(10**9)], "huge --cars"),
            ("export", "{world}/x.onnx", ["--model", "{tiny}/a.onnx"], "--model already ONNX")]
    for command, out, options, what in more:
        yield pytest.param(command, out, options, id=f"{command}: {what}")


@pytest.mark.parametrize(("command", "out", "more"), list(_bad_outputs()))
def test_a_bad_output_or_size_is_one_line_before_any_work(world, tiny, command, out, more):
    (world / "report" / "index.html").mkdir(parents=True)
    fill = {"world": world, "tiny": tiny}
    out = out.format(**fill)
    args = [arg.format(out=out, **fill) for arg in [*CASES[command], *more]]
    before = sorted(world.rglob("*"))
    line = refusal(run(*args))
    at_fault = args[-2:] if more and more[0] != "--overwrite" else ["--out", out]
    assert any(word in line for word in at_fault), line  # the option or the path at fault
    assert sorted(world.rglob("*")) == before  # nothing left behind
