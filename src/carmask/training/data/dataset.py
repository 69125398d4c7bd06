"""Torch datasets for training (photo + mask) and prediction (photo only).

Photos are decoded straight to a reduced size when the training size allows (libjpeg's DCT
scaling), which makes low-resolution training several times cheaper than full decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from carmask.data.io import read_image, read_mask
from carmask.data.io import reduction as decode_reduction  # one rule for every reader
from carmask.data.layout import Record
from carmask.inference.model_files import IMAGENET_MEAN, IMAGENET_STD
from carmask.inference.outputs import fit_photo  # one preparation for training and prediction
from carmask.training.data.transforms import normalize


def load_photo(path: Path, size: tuple[int, int] | None, source_size: tuple[int, int] | None = None,
               channels: int = 3) -> np.ndarray:
    """Decode a photo and resize it to `size` (h, w) with area averaging; (H, W, C) uint8."""
    reduce = decode_reduction(source_size, size) if size and source_size else 1
    image = read_image(path, reduce=reduce if path.suffix.lower() in (".jpg", ".jpeg") else 1)
    return fit_photo(image, size, channels)


def fit_mask(mask: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize a bool mask to `size` (h, w): area-average, then threshold at one half."""
    if not size or mask.shape == tuple(size):
        return mask
    scaled = cv2.resize(mask.astype(np.uint8) * 255, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return scaled >= 128


def load_mask(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """Decode a mask and resize it to `size` (h, w) with `fit_mask`."""
    return fit_mask(read_mask(path), size)


class SegmentationDataset(Dataset):
    """(photo, mask) pairs resized to `size` (h, w), augmented jointly, photo normalised.

    Returns `(image float32 (C, h, w), mask float32 (1, h, w))`.
    """

    def __init__(
        self,
        records: Sequence[Record],
        size: tuple[int, int],
        transform: Callable | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        channels: int = 3,
        source_size: tuple[int, int] = (1280, 1918),
        cache: Path | None = None,
    ) -> None:
        missing = [r.image_id for r in records if r.mask_path is None]
        if missing:
            raise ValueError(f"{len(missing)} records have no mask, e.g. {missing[0]}")
        self.records = list(records)
        self.size = tuple(size)
        self.transform = transform
        self.mean, self.std, self.channels = mean, std, channels
        self.source_size = source_size
        # decoded and resized once, as uint8 .npy at the training size, so long runs on a
        # CPU spend their cores on the model rather than on JPEG and GIF decoding
        self.cache = Path(cache) / f"{self.size[0]}x{self.size[1]}-c{channels}" if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        cached = self.cache / f"{record.image_id}.npz" if self.cache else None
        if cached is not None and cached.is_file():
            try:
                with np.load(cached) as stored:
                    return stored["photo"], stored["mask"]
            except (OSError, ValueError, KeyError):
                pass  # a file cut short by a kill: decode again and rewrite it
        photo = load_photo(record.image_path, self.size, self.source_size, self.channels)
        mask = load_mask(record.mask_path, self.size)
        if cached is not None:
            from carmask.util.atomic import atomic_path

            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp, open(tmp, "wb") as file:
                np.savez(file, photo=photo, mask=mask)
        return photo, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        photo, mask = self._load(self.records[index])
        image = tv_tensors.Image(torch.from_numpy(photo).permute(2, 0, 1))
        target = tv_tensors.Mask(torch.from_numpy(mask.astype(np.uint8))[None])
        if self.transform is not None:
            image, target = self.transform(image, target)
        return normalize(image.as_subclass(torch.Tensor), self.mean, self.std), \
            target.as_subclass(torch.Tensor).float()


class PhotoDataset(Dataset):
    """Photos only, for prediction. Returns `(image float32 (C, h, w), index)`."""

    def __init__(
        self,
        paths: Sequence[Path],
        size: tuple[int, int],
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        channels: int = 3,
        source_size: tuple[int, int] | None = (1280, 1918),
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.size = tuple(size)
        self.mean, self.std, self.channels = mean, std, channels
        self.source_size = source_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        photo = load_photo(self.paths[index], self.size, self.source_size, self.channels)
        image = torch.from_numpy(photo).permute(2, 0, 1)
        return normalize(image, self.mean, self.std), index
