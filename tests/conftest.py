"""Shared fixtures: the real Carvana data beside the project, and small Kaggle-layout folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
