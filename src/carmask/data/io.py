"""Reading Carvana images and masks, with errors that name the file and the problem."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

cv2.setNumThreads(1)  # decoding runs in our own worker pools; nested threads only contend


class DataError(ValueError):
    """A data file that cannot be used, with the file named in the message."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


def read_image(path: str | Path, reduce: int = 1) -> np.ndarray:
    """Decode a photo as an RGB uint8 array (H, W, 3).

    `reduce` in {1, 2, 4, 8} asks libjpeg for a smaller image directly, which is several times
    faster than decoding at full size and resizing afterwards.
    """
    flags = {
        1: cv2.IMREAD_COLOR,
        2: cv2.IMREAD_REDUCED_COLOR_2,
        4: cv2.IMREAD_REDUCED_COLOR_4,
        8: cv2.IMREAD_REDUCED_COLOR_8,
    }
    if reduce not in flags:
        raise ValueError(f"reduce must be 1, 2, 4 or 8, got {reduce}")
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    bgr = cv2.imread(str(path), flags[reduce])
    if bgr is None:
        # OpenCV says nothing about why; Pillow can (GIF, truncated or not an image at all).
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(path, f"not a readable image ({error})") from None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


_END_MARKERS = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND"}


def truncation_problem(path: str | Path, tail: int = 1024) -> str | None:
    """Why a JPEG or PNG file is cut short (its end marker is missing), or None. Decoders fill a
    truncated photo with grey rather than fail, so this is checked where it matters."""
    marker = _END_MARKERS.get(Path(path).suffix.lower())
    if marker is None:
        return None
    with open(path, "rb") as file:
        file.seek(max(0, Path(path).stat().st_size - tail))
        if marker not in file.read():
            return "file ends before its end-of-image marker"
    return None


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a mask file as a bool array (H, W). Accepts values {0,1} or {0,255} only."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames != 1:
                raise DataError(path, f"mask has {frames} frames, expected 1")
            values = np.asarray(image if image.mode in ("P", "L", "1") else image.convert("L"))
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(path, f"not a readable mask ({error})") from None
    if values.ndim != 2:
        raise DataError(path, f"mask must be single-channel, got shape {values.shape}")
    problem = binary_problem(values)
    if problem:
        raise DataError(path, problem)
    return values != 0


def binary_problem(values: np.ndarray) -> str | None:
    """Why a mask's pixel values are not binary ({0,1} or {0,255}), or None when they are."""
    if values.dtype == bool:
        return None
    top = values.max(initial=0)
    if top <= 1:
        return None
    if top == 255 and not np.count_nonzero((values != 0) & (values != 255)):
        return None
    present = np.unique(values)  # slow path, only for masks that are already known to be bad
    shown = ", ".join(str(v) for v in present[:8].tolist()) + (", ..." if len(present) > 8 else "")
    return f"mask is not binary: values {{{shown}}}, expected {{0,1}} or {{0,255}}"


def save_mask(mask: np.ndarray, path: str | Path) -> None:
    """Write a bool mask as a 0/255 PNG or a Kaggle-style {0,1} palette GIF, by extension."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        height, width = mask.shape
        image = Image.frombytes("P", (width, height), np.ascontiguousarray(mask, np.uint8).tobytes())
        image.putpalette([0, 0, 0, 255, 255, 255])
    else:
        image = Image.fromarray(mask.astype(np.uint8) * 255)
    tmp = path.with_name(path.name + ".tmp")
    # optimize=False: Pillow would otherwise drop unused palette entries and renumber the pixels
    image.save(tmp, format="GIF" if path.suffix.lower() == ".gif" else "PNG", optimize=False)
    tmp.replace(path)
