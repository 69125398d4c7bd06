"""Cut cars out of photos: alpha from the predicted mask, soft edges, a kept floor shadow, and
composites over a colour or another image at the photo's full resolution.

Everything here works on arrays, so the command line (files), the service (uploads) and the demo
share it; `cutout_files` is the batch job behind `carmask cutout`.
"""

from __future__ import annotations

import glob
import io
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageColor

from carmask.util.atomic import write_bytes
from carmask.data.io import DataError, read_photo
from carmask.util.parallel import imap_bounded
from carmask.util.progress import Track, silent_track

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}


class CutoutError(ValueError):
    """An option or input the cut-out cannot use; the message says which and why."""


# -- backgrounds ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Background:
    """Transparent, a solid colour, or an image scaled to cover the photo."""

    kind: str  # "transparent" | "color" | "image"
    color: tuple[int, int, int] | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # RGB uint8

    @property
    def transparent(self) -> bool:
        return self.kind == "transparent"

    @classmethod
    def from_image(cls, image: np.ndarray) -> Background:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise CutoutError(f"background image must be RGB uint8, got {image.dtype} {image.shape}")
        return cls("image", image=image)


TRANSPARENT = Background("transparent")


def parse_background(spec: str, allow_files: bool = True) -> Background:
    """'transparent', a colour ('white', '#RRGGBB', '#RGB', any CSS name) or an image file path."""
    text = spec.strip()
    if text.lower() in ("transparent", "none", "alpha"):
        return TRANSPARENT
    try:
        color = ImageColor.getrgb(text)
    except ValueError:
        color = None
    if color is not None:
        # Pillow parses rgb(300,0,0) as (300, 0, 0), which would wrap round to (44, 0, 0) in
        # the 8-bit picture: refuse it instead
        if not all(0 <= c <= 255 for c in color):
            raise CutoutError(f"background {spec!r}: colour components must be 0..255, "
                              f"got {tuple(color[:3])}")
        return Background("color", color=tuple(color[:3]))
    if allow_files and Path(text).is_file():
        try:
            return Background.from_image(read_photo(text).pixels)
        except DataError as error:
            raise CutoutError(f"background {error}") from None
    where = ", or an existing image file" if allow_files else ""
    raise CutoutError(f"background {spec!r} is not 'transparent', a colour (white, #RRGGBB){where}")


def cover(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale `image` to cover (h, w) keeping its aspect ratio, then centre-crop to exactly it."""
    height, width = size
    scale = max(height / image.shape[0], width / image.shape[1])
    scaled = (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, scaled, interpolation=interpolation)
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return resized[top:top + height, left:left + width]


# -- alpha and shadow ----------------------------------------------------------------------------
def feathered_alpha(mask: np.ndarray, feather: float = 0.0) -> np.ndarray:
    """float32 alpha (H, W) from a bool mask; `feather` > 0 ramps it smoothly from 0 at the mask's
    edge to 1 that many pixels inside, so no studio backdrop bleeds in as a halo."""
    if feather <= 0:
        return mask.astype(np.float32)
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    ramp = np.clip(inside / float(feather), 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible kink at either end


def floor_shadow(photo: np.ndarray, mask: np.ndarray, strength: float = 0.9) -> np.ndarray:
    """The photo's own floor shadow under the car, as float32 opacity (H, W) in 0..1.

    Darkness is measured against the backdrop's brightness row by row (a bright percentile of
    the non-car pixels), only in a band around the car's lower half and wheels, then softened.
    """
    height, width = mask.shape
    shadow = np.zeros((height, width), np.float32)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return shadow
    car_h, car_w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    y0, y1 = rows[0] + car_h // 2, min(height, rows[-1] + max(2, car_h // 8) + 1)
    x0, x1 = max(0, cols[0] - car_w // 12), min(width, cols[-1] + car_w // 12 + 1)
    gray = cv2.cvtColor(np.ascontiguousarray(photo[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    gray = gray.astype(np.float32)
    backdrop = np.where(mask[y0:y1, x0:x1], np.nan, gray)
    with np.errstate(all="ignore"):
        level = np.nanpercentile(backdrop, 95, axis=1)[:, None]
    level = np.where(np.isfinite(level) & (level > 8), level, 255.0)
    darkness = np.clip(1.0 - gray / level, 0.0, 1.0)
    darkness = np.clip((darkness - 0.03) / 0.97, 0.0, 1.0)  # sensor noise is not a shadow
    # fade the band's borders so the shadow has no box edges
    window = np.zeros((height, width), np.float32)
    window[y0:y1, x0:x1] = 1.0
    sigma = max(1.0, 0.04 * car_w)
    window = cv2.GaussianBlur(window, (0, 0), sigma)
    shadow[y0:y1, x0:x1] = darkness
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(1.0, 0.004 * car_w)) * window
    return np.clip(shadow * strength, 0.0, 1.0)


# -- composing -----------------------------------------------------------------------------------
def composite(photo: np.ndarray, mask: np.ndarray, background: Background = TRANSPARENT, *,
              feather: float = 0.0, shadow: bool = False) -> Image.Image:
    """The car of `photo` (RGB uint8, H x W x 3) over `background`, at the photo's resolution.

    Transparent gives RGBA whose alpha is the (feathered) mask plus the kept shadow; a colour or
    an image gives RGB.
    """
    if photo.shape[:2] != mask.shape:
        raise CutoutError(f"mask {mask.shape} does not match photo {photo.shape[:2]}")
    alpha = feathered_alpha(mask, feather)
    shade = floor_shadow(photo, mask) if shadow else None
    if background.transparent:
        # the car over its black shadow: opacity a + s(1 - a), so this RGBA laid over a colour
        # gives exactly the colour composite below
        total = alpha if shade is None else alpha + shade * (1.0 - alpha)
        # premultiplied: the shadow is black, so the colour is the photo's share of the opacity
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, alpha / total, 0.0)[..., None]
        rgb = (photo * share + 0.5).astype(np.uint8)
        return Image.fromarray(np.dstack([rgb, (total * 255 + 0.5).astype(np.uint8)]), "RGBA")
    if background.kind == "color":
        base = np.empty_like(photo, dtype=np.float32)
        base[...] = background.color
    else:
        base = cover(background.image, photo.shape[:2]).astype(np.float32)
    if shade is not None:
        base *= (1.0 - shade)[..., None]
    a = alpha[..., None]
    out = photo * a + base * (1.0 - a)
    return Image.fromarray((out + 0.5).astype(np.uint8), "RGB")


def encode_image(image: Image.Image, fmt: str = "png") -> bytes:
    """PNG, WebP (both keep alpha) or JPEG bytes; JPEG refuses a transparent image."""
    fmt = fmt.lower().lstrip(".").replace("jpeg", "jpg")
    if fmt not in FORMATS:
        raise CutoutError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "jpg" and image.mode == "RGBA":
        raise CutoutError("jpg has no alpha channel: use png or webp for a transparent cut-out, "
                          "or give a background colour or image")
    buffer = io.BytesIO()
    options = {"png": {"compress_level": 3}, "webp": {"quality": 92, "method": 4},
               "jpg": {"quality": 92}}[fmt]
    image.save(buffer, format=FORMATS[fmt], **options)
    return buffer.getvalue()



# -- the batch job -------------------------------------------------------------------------------
def expand_inputs(specs: Sequence[str | Path]) -> list[Path]:
    """Photo files from file paths, folders (their photos, sorted) and globs, in the order given;
    a spec that matches nothing is an error naming it."""
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(str(spec)):
            matches = sorted(Path(p) for p in glob.glob(str(spec), recursive=True)
                             if Path(p).suffix.lower() in PHOTO_SUFFIXES)
        else:
            raise CutoutError(f"{spec}: no such file, folder or glob")
        if not matches:
            raise CutoutError(f"{spec}: no photos ({', '.join(PHOTO_SUFFIXES)}) found")
        found.extend(matches)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return [Path(p) for p in unique]


def output_names(inputs: Sequence[Path], out_dir: Path, fmt: str) -> list[Path]:
    """`<stem>.<fmt>` in out_dir; two inputs with one stem would overwrite each other: an error."""
    outputs, seen = [], {}
    for path in inputs:
        target = out_dir / f"{path.stem}.{fmt}"
        if target in seen:
            raise CutoutError(f"{seen[target]} and {path} would both be written to {target}")
        seen[target] = path
        outputs.append(target)
    return outputs


def largest_car(mask: np.ndarray) -> np.ndarray:
    """Only the biggest connected region of a bool mask: the main car of a photo with several."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:  # background and at most one region
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


@dataclass
class CutoutSummary:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # outputs that existed (no --overwrite)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    models: Counter = field(default_factory=Counter)  # cut-outs made by each model
    warnings: list[tuple[Path, str]] = field(default_factory=list)  # masks to check


def plan_outputs(inputs: Sequence[Path], out: Path, fmt: str, overwrite: bool = False,
                 single_file: bool = False) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(photo, cut-out) pairs still to make and the cut-outs already there (kept without
    `overwrite`). `out` is a folder (the cut-outs named after the photos) or, with `single_file`
    and one photo, the cut-out's own file name."""
    targets = [out] if single_file else output_names(inputs, out, fmt)
    todo, skipped = [], []
    for source, target in zip(inputs, targets):
        if target.exists() and not overwrite:
            skipped.append(target)
        else:
            todo.append((source, target))
    return todo, skipped


def format_of(path: Path) -> str | None:
    """The cut-out format a file name asks for (png, webp, jpg), or None for a folder name."""
    suffix = path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
    return suffix if suffix in FORMATS else None


def cutout_files(predictor, inputs: Iterable[str | Path], out_dir: str | Path,
                 background: Background = TRANSPARENT, *, feather: float = 0.0,
                 shadow: bool = False, fmt: str = "png", overwrite: bool = False,
                 largest: bool = False, single_file: bool = False,
                 track: Track = silent_track) -> CutoutSummary:
    """Cut out every photo into `out_dir` (or, with `single_file`, one photo into that file),
    predicting in the predictor's batches and composing and encoding in a bounded thread pool;
    an unreadable photo is recorded and the job goes on. Every car in a photo is kept, or only
    the biggest with `largest`. `predictor` may be a callable that makes it: it is called only
    when there is something to do."""
    fmt = fmt.lower().replace("jpeg", "jpg")
    if fmt not in FORMATS:
        raise CutoutError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "jpg" and background.transparent:
        raise CutoutError("jpg has no alpha channel: use --format png or webp for a transparent "
                          "cut-out, or give --background white, #RRGGBB or an image")
    out_dir = Path(out_dir)
    inputs = [Path(p) for p in inputs]
    if single_file and len(inputs) != 1:
        raise CutoutError(f"{out_dir} is a file name, for one photo; {len(inputs)} photos need a folder")
    (out_dir.parent if single_file else out_dir).mkdir(parents=True, exist_ok=True)
    summary = CutoutSummary()
    todo, summary.skipped = plan_outputs(inputs, out_dir, fmt, overwrite, single_file)
    targets = dict(todo)
    if not todo:
        return summary
    if callable(predictor) and not hasattr(predictor, "predict_paths"):
        predictor = predictor()

    def finish(prediction):
        if prediction.error:
            return prediction, None, prediction.error
        try:
            # upright as displayed, like the photo the predictor decoded: the mask fits it
            photo = read_photo(prediction.path).pixels
            mask = largest_car(prediction.mask) if largest else prediction.mask
            image = composite(photo, mask, background, feather=feather, shadow=shadow)
            target = targets[prediction.path]
            write_bytes(target, encode_image(image, fmt))
            return prediction, target, None
        except DataError as error:  # names the file itself
            return prediction, None, str(error)
        except (CutoutError, OSError) as error:
            return prediction, None, f"{prediction.path}: {error}"

    predictions = predictor.predict_paths(list(targets))
    for prediction, target, error in track(imap_bounded(finish, predictions, workers=2),
                                           total=len(todo), description="cutting out"):
        if error:
            log.info("%s", error)
            summary.failed.append((prediction.path, error))
            continue
        summary.written.append(target)
        summary.models[prediction.model] += 1
        summary.warnings.extend((prediction.path, w) for w in prediction.warnings)
    return summary
