"""Full-resolution outline refinement, the second stage after the coarse model, without torch.

The coarse model sees the photo smaller (the refiner was trained on the 640x960 file's outlines,
where each of its pixels covers 2x2 photo pixels), and most of its wrong pixels are the first
pixel on either side of the true outline. The refiner looks at the full-resolution photo plus
the coarse logit, but only in tiles that hold the coarse outline, and rewrites the logit in a
narrow band around it. Everything else keeps the coarse answer.

A tile is a `core` x `core` square of the photo on a fixed grid, read with `margin` pixels of
context on each side (so the network's input is core + 2*margin square). Training crops follow
the same geometry (carmask.training.refiner_train), so the network sees at training what it
sees here.

A refiner runs here from its own ONNX file (`carmask export` of a `carmask train-refiner` run,
role "refiner" in its config, which names the coarse model it refines). A shipped model's
refiner is the file weights/models.json names under the model's entry ("refiner"). The refiner
attached inside a combined `.safetensors` file needs torch (carmask.training.refiner).

Quality: "fast" is one plain pass; "best" adds flip TTA and the refiner where the model it runs
has one. The shipped studio model's best is its 1024x1536 file, which has none: the refiner,
trained on the 640x960 file's outlines, harms there (docs/models.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from carmask.inference.model_files import IMAGENET_MEAN, IMAGENET_STD, ModelFileError, read_config

log = logging.getLogger(__name__)

LOGIT_CLIP = 8.0  # the coarse logit enters the refiner as clip(logit, ±8) / 8
# the photo's channels are normalised as ImageNet's (the refiner's encoder was pretrained on it)
MEAN = np.array(IMAGENET_MEAN, np.float32)
STD = np.array(IMAGENET_STD, np.float32)
REFINER_ROLE = "refiner"
QUALITIES = ("fast", "best")


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


class Refiner:
    """A refiner ready to run: `self(photo, logit)` is the logit refined along its outline.
    Subclasses set `geometry`, `architecture`, `source` (the file it came from) and `_run`."""

    geometry: RefinerGeometry
    architecture: str
    source: str
    _run: Callable[[np.ndarray], np.ndarray]

    @property
    def name(self) -> str:
        return f"{self.architecture} ({self.source})"

    def __call__(self, photo: np.ndarray, logit: np.ndarray) -> np.ndarray:
        """The full-resolution coarse logit (H, W) refined along its outline."""
        return refine_logit(photo, logit, self._run, self.geometry, MEAN, STD)


class OnnxRefiner(Refiner):
    """A refiner's own ONNX file on onnxruntime (a batch (N, 4, tile, tile) float32 in, the
    refined logits (N, 1, tile, tile) out). `coarse`, the model file it will refine: a refiner
    trained on another model's outlines is used, with a warning."""

    def __init__(self, path: str | Path, threads: int | None = None,
                 coarse: Path | None = None) -> None:
        from carmask.inference.onnx_model import OnnxModel

        path = Path(path)
        config = read_config(path)
        if config.get("role") != REFINER_ROLE or "geometry" not in config:
            raise ModelFileError(f"{path}: not an outline refiner's ONNX file (make one with "
                                 "`carmask export --model RUN/refiner.safetensors`)")
        self.geometry = RefinerGeometry(**config["geometry"])
        self.architecture, self.source = config["architecture"], path.name
        self.refines = config.get("refines")
        if coarse is not None and self.refines and refined_stem(self.refines) != coarse.stem:
            log.warning("%s was trained on the outlines of %s, not %s: it may help less, or harm",
                        path.name, self.refines, coarse.name)
        self._run = OnnxModel(path, threads)


def refined_stem(refines: str) -> str:
    """The model file stem of a refiner's "refines" (a model id, stem@sha256-prefix)."""
    return refines.split("@")[0]


def shipped_refiner(model: Path) -> Path | None:
    """The refiner weights/models.json names for a shipped model file (its entry's "refiner"),
    whether or not the file is in this install; None for any other model."""
    from carmask.inference import model_files

    name = model_files.shipped_entry(model).get("refiner")
    return model_files.WEIGHTS / name if name else None


def check_quality(quality: str) -> str:
    if quality not in QUALITIES:
        raise ValueError(f"quality must be fast or best, got {quality!r}")
    return quality


def quality_record(predictor) -> dict:
    """What ran of a Predictor, an AutoPredictor (or a stand-in): {"quality", "tta", "refiner"
    (its name, None without)}, for reports."""
    parts = [predictor.studio, predictor.general] if hasattr(predictor, "general") else [predictor]
    refiners = [p.refiner.name for p in parts if getattr(p, "refiner", None) is not None]
    return {"quality": getattr(predictor, "quality", "fast"),
            "tta": bool(getattr(predictor, "tta", False)),
            "refiner": refiners[0] if refiners else None}


def describe_quality(record: dict) -> str:
    """'flip TTA + outline refiner refiner-mnv2 (file)', 'flip TTA', 'no TTA', ... of a record."""
    parts = ["flip TTA" if record["tta"] else "no TTA"]
    if record["refiner"]:
        parts.append(f"outline refiner {record['refiner']}")
    return " + ".join(parts)
