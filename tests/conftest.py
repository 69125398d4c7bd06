"""Shared fixtures: the real Carvana data beside the project, and small Kaggle-layout folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TORCH_WORLD = ("torch", "torchvision", "lightning", "segmentation_models_pytorch", "timm", "onnx")
# The CLI in a fresh interpreter in which importing torch (or anything of training) fails: what
# a user of the plain install (`pip install carmask`) runs.
_WITHOUT_TORCH = f"""
import sys
for name in {TORCH_WORLD!r}:
    sys.modules[name] = None  # `import name` now raises ImportError
from carmask.cli import main
sys.argv = ["carmask", *sys.argv[1:]]
main()
"""


def run_without_torch(*args: str, cwd=None, timeout: float = 600):
    """`carmask ARGS` where torch cannot be imported; a CompletedProcess with text output."""
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)

CARVANA = Path(__file__).resolve().parents[2] / "shared" / "data" / "carvana"
CARVANA = Path(os.environ.get("CARMASK_CARVANA", CARVANA))


@pytest.fixture(scope="session")
def carvana() -> Path:
    """The real Carvana folder (../shared/data/carvana); tests that need it skip without it."""
    if not (CARVANA / "train_masks").is_dir():
        pytest.skip(f"real Carvana data not found at {CARVANA} (set CARMASK_CARVANA to its folder)")
    return CARVANA


def real_cars(carvana: Path, count: int) -> list[str]:
    return sorted({p.name[:12] for p in (carvana / "train").glob("*.jpg")})[:count]


def make_kaggle_folder(carvana: Path, root: Path, cars: int = 2, test_images: int = 2) -> Path:
    """A Kaggle-layout folder of symlinks to the first `cars` real cars (no copying of 1.6 GB)."""
    for sub in ("train", "train_masks", "test"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for car in real_cars(carvana, cars):
        for image in sorted((carvana / "train").glob(f"{car}_*.jpg")):
            (root / "train" / image.name).symlink_to(image)
            mask = carvana / "train_masks" / f"{image.stem}_mask.gif"
            (root / "train_masks" / mask.name).symlink_to(mask)
    for image in sorted((carvana / "test").glob("*.jpg"))[:test_images]:
        (root / "test" / image.name).symlink_to(image)
    shutil.copy(carvana / "metadata.csv", root / "metadata.csv")
    return root


@pytest.fixture
def small_real_folder(carvana: Path, tmp_path: Path) -> Path:
    return make_kaggle_folder(carvana, tmp_path / "kaggle")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic Kaggle folder: 6 train cars, 1 test car, 192x128 photos."""
    from carmask.data.synth import synthesize
    return synthesize(tmp_path_factory.mktemp("synth") / "data", cars=6, test_cars=1,
                      size=(192, 128), seed=5).root


@pytest.fixture(scope="session")
def synth_run(synth_data, tmp_path_factory):
    """A unet-mnv2 trained for 3 short epochs on `synth_data` at 64x96: (run folder, summary)."""
    from carmask.training.train import TrainConfig, train
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(data=synth_data, model="unet-mnv2", out=out, size=(64, 96), epochs=3,
                         batch=8, lr=3e-3, folds=3, workers=0, seed=0)
    return out, train(config, progress_bar=False)


# A photo of a car the shipped model never trained on (one of its validation cars).
HELD_OUT_PHOTO = "0495dcf27283_06"


@pytest.fixture(scope="session")
def held_out(carvana: Path) -> tuple[Path, Path]:
    """(photo, true mask) of a car the shipped model was validated on, not trained on."""
    return (carvana / "train" / f"{HELD_OUT_PHOTO}.jpg",
            carvana / "train_masks" / f"{HELD_OUT_PHOTO}_mask.gif")


@pytest.fixture(scope="session")
def shipped_predictor():
    """The shipped model on onnxruntime, loaded once for the session."""
    from carmask.inference.predictor import Predictor
    return Predictor(backend="onnx")


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def sideways_jpeg(photo: Path, out: Path) -> Path:
    """`photo` stored turned a quarter left, with EXIF orientation 6 ("turn it right to view"):
    what a camera held upright writes. Viewers, and carmask, show the original."""
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(photo) as image:
        image.transpose(Image.Transpose.ROTATE_90).save(out, quality=95, exif=exif.tobytes())
    return out


@pytest.fixture
def bad_photos(held_out, tmp_path) -> dict[str, Path]:
    """A folder of photos that have fooled readers, named by what they are; the good ones are
    the held-out photo in disguise."""
    from PIL import Image
    folder = tmp_path / "bad_photos"
    folder.mkdir()
    data = held_out[0].read_bytes()
    files = {
        "sideways": sideways_jpeg(held_out[0], folder / "sideways.jpg"),
        "half": folder / "half.jpg",  # a JPEG cut in half
        "half_with_end": folder / "half_with_end.jpg",  # ... with its end-of-image marker put back
        "bomb": folder / "bomb.png",
        "empty": folder / "empty.jpg",
        "text": folder / "notes.jpg",
        "png_named_jpg": folder / "png_inside.jpg",
    }
    files["half"].write_bytes(data[: len(data) // 2])
    files["half_with_end"].write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    files["bomb"].write_bytes(bomb_png())
    files["empty"].write_bytes(b"")
    files["text"].write_text("these are not the photos you are looking for\n")
    with Image.open(held_out[0]) as image:
        image.save(files["png_named_jpg"], format="PNG")
    return files


WILD = Path(os.environ.get("CARMASK_WILD", CARVANA.parent / "cars_in_the_wild"))


@pytest.fixture(scope="session")
def wild() -> Path:
    """The outdoor car photos (../shared/data/cars_in_the_wild); tests that need them skip
    without them."""
    if not (WILD / "index.csv").is_file():
        pytest.skip(f"cars_in_the_wild not found at {WILD} (set CARMASK_WILD to its folder)")
    return WILD


@pytest.fixture(scope="session")
def auto_predictor():
    """The default of every consumer: the studio and the general model on onnxruntime."""
    from carmask.inference.route import AutoPredictor
    return AutoPredictor(backend="onnx")


class GeneralRuns:
    """`carmask train-general` on the small data with its training replaced: `invoke(*options)`
    runs the CLI, and `configs` keeps the config of each run that reached the training."""

    def __init__(self, base: list[str]) -> None:
        self.base, self.configs = base, []

    def invoke(self, *options: str):
        from typer.testing import CliRunner

        from carmask.cli import app

        return CliRunner().invoke(app, [*self.base, *options])


@pytest.fixture
def train_general_cli(synth_data, wild, tmp_path, monkeypatch) -> GeneralRuns:
    import carmask.training.general as general

    runs = GeneralRuns(["train-general", "--data", str(synth_data), "--wild", str(wild),
                        "--out", str(tmp_path / "run")])
    monkeypatch.setattr(general, "train_anywhere",
                        lambda config: runs.configs.append(config) or {"best_outdoor_val_dice": 0.5})
    return runs
