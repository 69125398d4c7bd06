"""Full-resolution outline refinement: the second stage after the coarse model.

The coarse model sees the photo at 640x960, so each of its pixels covers 2x2 photo pixels, and
most of its wrong pixels are the first pixel on either side of the true outline. The refiner
looks at the full-resolution photo plus the coarse logit, but only in tiles that hold the coarse
outline, and rewrites the logit in a narrow band around it. Everything else keeps the coarse
answer.

A tile is a `core` x `core` square of the photo on a fixed grid, read with `margin` pixels of
context on each side (so the network's input is core + 2*margin square). Training crops follow
the same geometry (see refine_train), so the network sees at training what it sees here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from carmask.training.data.dataset import IMAGENET_MEAN, IMAGENET_STD

LOGIT_CLIP = 8.0  # the coarse logit enters the refiner as clip(logit, ±8) / 8
MEAN = np.array(IMAGENET_MEAN, np.float32)  # the photo's channels are normalised as ImageNet's
STD = np.array(IMAGENET_STD, np.float32)


@dataclass(frozen=True)
class RefinerGeometry:
    core: int = 96  # photo pixels each tile decides
    margin: int = 16  # context on each side, read but not decided
    band: int = 6  # pixels within this distance of the coarse outline are refined

    @property
    def tile(self) -> int:
        return self.core + 2 * self.margin

    def as_dict(self) -> dict:
        return asdict(self)


class ResidualRefiner(nn.Module):
    """Wraps a 4-channel network (RGB normalised + scaled coarse logit) that returns `fine`
    feature maps at its input's resolution. A small head sees those features beside the input's
    own full-resolution pixels and predicts a correction to the coarse logit; the head's last
    layer starts at zero, so training starts from the coarse answer."""

    def __init__(self, net: nn.Module, fine: int = 8) -> None:
        super().__init__()
        self.net = net
        self.head = nn.Sequential(nn.Conv2d(fine + 4, fine, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(fine, 1, 1))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.net(x))
        # The correction is scaled like the logit: flipping a pixel takes a change of several
        # units, which a head starting at zero would otherwise take hundreds of steps to reach.
        correction = self.head(torch.cat([features, x], dim=1))
        return (x[:, 3:4] + correction) * LOGIT_CLIP


def outline_band(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` of the mask's outline (inside or outside), as a bool array."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    mask8 = mask.astype(np.uint8)
    return cv2.dilate(mask8, kernel).astype(bool) & ~cv2.erode(mask8, kernel).astype(bool)


def tiles_on_band(band: np.ndarray, core: int) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of the grid tiles of side `core` that hold band pixels."""
    height, width = band.shape
    rows, cols = -(-height // core), -(-width // core)
    padded = np.zeros((rows * core, cols * core), bool)
    padded[:height, :width] = band
    occupied = padded.reshape(rows, core, cols, core).any(axis=(1, 3))
    return [(int(r) * core, int(c) * core) for r, c in zip(*np.nonzero(occupied))]


def crop_mirrored(array: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """A size x size crop at (top, left) that may lie partly outside `array`: outside, the
    pixels are mirrored, as the photo's own edge would continue."""
    ys = _mirror(np.arange(top, top + size), array.shape[0])
    xs = _mirror(np.arange(left, left + size), array.shape[1])
    return array[ys[:, None], xs[None, :]]


def _mirror(index: np.ndarray, length: int) -> np.ndarray:
    period = 2 * length - 2 if length > 1 else 1
    index = np.abs(index) % period
    return np.where(index >= length, period - index, index)


def refiner_input(photo: np.ndarray, logit: np.ndarray, top: int, left: int, size: int,
                  mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(4, size, size) float32 at (top, left): RGB normalised with `mean`/`std`, then the coarse
    logit clipped and scaled to [-1, 1]."""
    rgb = (crop_mirrored(photo, top, left, size).astype(np.float32) / 255.0 - mean) / std
    scaled = np.clip(crop_mirrored(logit, top, left, size), -LOGIT_CLIP, LOGIT_CLIP) / LOGIT_CLIP
    return np.concatenate([rgb.transpose(2, 0, 1), scaled[None]], axis=0).astype(np.float32)


def refine_logit(photo: np.ndarray, logit: np.ndarray, run: Callable[[np.ndarray], np.ndarray],
                 geometry: RefinerGeometry, mean: np.ndarray, std: np.ndarray,
                 batch: int = 32) -> np.ndarray:
    """The coarse full-resolution `logit` (H, W) with the band around its outline rewritten by
    the refiner. `photo` is the RGB uint8 photo at the same (H, W); `run` maps a float32 batch
    (N, 4, tile, tile) to logits (N, 1, tile, tile)."""
    band = outline_band(logit > 0, geometry.band)
    corners = tiles_on_band(band, geometry.core)
    refined = logit.copy()
    core, margin = geometry.core, geometry.margin
    height, width = logit.shape
    for start in range(0, len(corners), batch):
        chunk = corners[start:start + batch]
        inputs = np.stack([refiner_input(photo, logit, y - margin, x - margin, geometry.tile,
                                         mean, std) for y, x in chunk])
        outputs = np.asarray(run(inputs))[:, 0, margin:margin + core, margin:margin + core]
        for (y, x), output in zip(chunk, outputs):
            h, w = min(core, height - y), min(core, width - x)
            where = band[y:y + h, x:x + w]
            refined[y:y + h, x:x + w][where] = output[:h, :w][where]
    return refined


class OutlineRefiner:
    """The refiner of a combined model file (its `config["refiner"]`), ready to run on torch (any
    device) or onnxruntime. As for the coarse model, its torch weights are loaded for onnxruntime
    only to export them the first time."""

    def __init__(self, config: dict, *, model_file: Path, backend: str = "torch",
                 device: torch.device | str = "cpu", threads: int | None = None) -> None:
        from carmask.training.models.io import load_refiner

        self.geometry = RefinerGeometry(**config["geometry"])
        self.architecture = config["architecture"]
        self.device = torch.device(device if isinstance(device, (str, torch.device)) else str(device))
        if backend == "onnx":
            from carmask.inference.onnx_model import OnnxModel
            from carmask.training.export import cached_export
            tile = (self.geometry.tile, self.geometry.tile)
            self._run = OnnxModel(cached_export(model_file, lambda: load_refiner(model_file)[0],
                                                tile, 4, part="refiner"), threads)
        else:
            self.network = load_refiner(model_file)[0].to(self.device).eval()
            self._run = self._run_torch

    def _run_torch(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.network(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def __call__(self, photo: np.ndarray, logit: np.ndarray) -> np.ndarray:
        """The full-resolution coarse logit (H, W) refined along its outline."""
        return refine_logit(photo, logit, self._run, self.geometry, MEAN, STD)
