"""The light install (issue 25): what users run for masks and cut-outs never imports torch, the
wheel installs and runs without it, and the package's layers keep their boundary."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TORCH_WORLD, run_without_torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "carmask"


@pytest.fixture(scope="module")
def test_photos(carvana) -> list[Path]:
    return sorted((carvana / "test").glob("*.jpg"))[:2]


def test_cutout_predict_and_models_run_with_torch_unimportable(test_photos, tmp_path):
    cut = run_without_torch("cutout", str(test_photos[0]), "--out", str(tmp_path / "cut"),
                            "--background", "white", cwd=tmp_path)
    assert cut.returncode == 0, cut.stderr
    assert (tmp_path / "cut" / f"{test_photos[0].stem}.png").is_file()
    pred = run_without_torch("predict", *map(str, test_photos), "--masks-dir", str(tmp_path / "masks"),
                             cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr
    mask = np.asarray(Image.open(tmp_path / "masks" / f"{test_photos[1].stem}_mask.png"))
    assert mask.shape == (1280, 1918) and 0.05 < (mask > 127).mean() < 0.6  # a car, not noise
    listing = run_without_torch("models", cwd=tmp_path)
    assert listing.returncode == 0 and all(role in listing.stdout for role in ("studio", "general", "refiner"))
    assert "carmask[train]" in listing.stdout  # the architectures need the extra, it says so


def test_the_kaggle_tools_run_with_torch_unimportable(small_real_folder, tmp_path):
    index = run_without_torch("data", "index", "--data", str(small_real_folder), cwd=tmp_path)
    assert index.returncode == 0 and "no problems found" in index.stdout, index.stderr
    mask = next((small_real_folder / "train_masks").iterdir())
    encoded = run_without_torch("rle", "encode", str(mask), cwd=tmp_path)
    assert encoded.returncode == 0 and encoded.stdout.split()[0].isdigit(), encoded.stderr
    scored = run_without_torch("evaluate", "--data", str(small_real_folder), "--model", "studio",
                               "--out", str(tmp_path / "eval"), "--json", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout.strip().splitlines()[-1])["dice"] > 0.99


@pytest.mark.parametrize("command", [["train", "--data", "."], ["export", "--out", "x.onnx"],
                                     ["average", "a", "b", "--out", "c"]])
def test_commands_that_need_torch_say_how_to_get_it(command, tmp_path):
    result = run_without_torch(*command, cwd=tmp_path)
    assert result.returncode == 1
    assert "pip install 'carmask[train]'" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


# The only places the torch-free layers name the training package: lazily, for a file or a
# backend that needs torch (a .safetensors file to export, a refiner, the torch backend).
LAZY_PLUG_INS = {("inference/model_files.py", "carmask.training.export"),
                 ("inference/predictor.py", "carmask.training.refiner"),
                 ("inference/route.py", "carmask.training.torch_backend")}


# torchrun (which comes with torch) starts `carmask predict` on several GPUs; only then are the
# ranks joined with torch.distributed.
UNDER_TORCHRUN = {("inference/distributed.py", "torch.distributed")}


@pytest.mark.parametrize("layer", ["util", "data", "kaggle", "inference", "apps"])
def test_torch_free_layers_never_import_torch_or_training(layer):
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for module in _imports(path):
            top = module.split(".")[0]
            assert top not in TORCH_WORLD or (relative, module) in UNDER_TORCHRUN, \
                f"{relative} imports {module}"
            if module.startswith("carmask.training"):
                assert (relative, module) in LAZY_PLUG_INS, f"{relative} imports {module}"
            if layer != "apps":  # the layers below the apps never reach up into them
                assert not module.startswith(("carmask.apps", "carmask.cli")), f"{relative} imports {module}"


def _python(version: str) -> str | None:
    """A working interpreter of that version: pyenv's, or on PATH (a pyenv shim may not run)."""
    candidates = [str(p) for p in sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python3"))]
    candidates += [found for found in [shutil.which(f"python{version}")] if found]
    for python in candidates:
        if subprocess.run([python, "-c", "import venv"], capture_output=True).returncode == 0:
            return python
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True, timeout=300)
    return next(out.glob("carmask-*.whl"))


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.11", "3.13"])
def test_the_wheel_installs_and_runs_without_torch(version, wheel, test_photos, tmp_path):
    python = _python(version)
    if python is None:
        pytest.skip(f"no Python {version} here")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    if install.returncode != 0 and "No matching distribution" in install.stderr:
        pytest.skip(f"the package index has no wheels of a dependency for Python {version}")
    assert install.returncode == 0, install.stderr[-2000:]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; "
                            "print(u.find_spec('torch') is None)"], capture_output=True, text=True)
    assert check.stdout.strip() == "True", "torch was installed by the plain install"
    carmask = str(venv / "bin" / "carmask")
    for command in ([carmask, "cutout", str(test_photos[0]), "--out", str(tmp_path / "cut")],
                    [carmask, "predict", *map(str, test_photos), "--masks-dir", str(tmp_path / "masks")]):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    api = subprocess.run([str(venv / "bin" / "python"), "-c",
                          f"import carmask; m = carmask.mask({str(test_photos[1])!r}); "
                          "print(m.size, m.mode)"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert api.stdout.split() == ["(1918,", "1280)", "L"], api.stderr
    cli_mask = np.asarray(Image.open(tmp_path / "masks" / f"{test_photos[1].stem}_mask.png")) > 127
    assert 0.05 < cli_mask.mean() < 0.6


@pytest.mark.parametrize("columns", ["80", "200"])
def test_carmask_models_shows_whole_file_names_in_any_terminal(columns, monkeypatch):
    """In 80 columns a table would cut the file names to "carvana-…": one block a model there."""
    from typer.testing import CliRunner

    from carmask.cli import app

    monkeypatch.setenv("COLUMNS", columns)
    listing = CliRunner().invoke(app, ["models"])
    assert listing.exit_code == 0, listing.output
    names = json.loads((PACKAGE / "weights" / "models.json").read_text())
    assert all(f"{name}.onnx" in listing.output for name in names), listing.output
    assert max(len(line) for line in listing.output.splitlines()) <= int(columns)
