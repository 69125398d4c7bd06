"""The one-call Python API: `carmask.remove(image)` and `carmask.mask(image)`.

    >>> import carmask
    >>> car = carmask.remove("car.jpg", background="white")      # a PIL image
    >>> car.save("car-white.png")
    >>> session = carmask.load()                                 # keeps the models for many calls
    >>> best = carmask.load(quality="best")                      # flip TTA, the larger studio file
    >>> masks = [session.mask(path) for path in paths]           # PIL "L" images, 0 or 255

`image` may be a path, the bytes of a photo file, a PIL image or a numpy array (uint8, or float
in 0..1; RGB, RGBA or greyscale; (H, W) or (H, W, C)). What comes back is of the kind given: a
PIL image for a path or a PIL image, PNG bytes for bytes, an array for an array. EXIF orientation
is applied to paths, bytes and PIL images, so results are upright as a viewer shows the photo.
Masks from a path are exactly those of `carmask predict` and `carmask cutout` on the same file.
No torch: this runs on onnxruntime.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from carmask.apps.canvas import Canvas
from carmask.apps.cutout import (TRANSPARENT, Background, CutoutError, CutoutOptions, largest_car,
                                 parse_background, render, with_canvas_warning)
from carmask.data.io import DataError, eight_bit, read_photo

ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray]


@dataclass
class Cutout:
    """One photo's result: the cut-out (PIL), its mask, which model made it, what to check."""
    image: Image.Image
    mask: np.ndarray  # (H, W) bool at the photo's size
    model: str  # "studio" or "general"
    warnings: list[str] = field(default_factory=list)


class Session:
    """The models, loaded once, for many calls (thread-safe). `model` is "auto" (each photo gets
    the studio or the general model, as the command line does), "studio", "general", or an
    `.onnx` model file. `quality` "fast" is one pass; "best" adds flip TTA and runs the studio
    model's larger file (fine-tuned at 1024x1536), at a fraction of the speed, for fewer wrong
    pixels along the outline. `tta`, when given, turns the flipped pass on or off whatever
    the quality."""

    def __init__(self, model: str | Path = "auto", *, quality: str = "fast",
                 tta: bool | None = None, threads: int | None = None) -> None:
        from carmask.inference.route import create_predictor

        self.predictor = create_predictor(model, backend="onnx", quality=quality, tta=tta,
                                          threads=threads, soft_edges=True)
        self._lock = threading.Lock()  # one onnxruntime run at a time: each uses every core

    def cutout(self, image: ImageInput, *, background: str | tuple | ImageInput = "transparent",
               feather: float = 0.0, shadow: bool = False, largest: bool = False,
               hard_edges: bool = False, canvas: str | tuple[int, int] | Canvas | None = None,
               margin: float = 0.05, align: str = "center") -> Cutout:
        """The cut-out of `image` with its mask, model and warnings; see `remove`."""
        options = _options(background, feather, shadow, largest, hard_edges, canvas, margin, align)
        photo, prediction = self._predict(image)
        picture = render(photo, prediction, options, self.predictor)
        prediction = with_canvas_warning(prediction, options)
        mask = largest_car(prediction.mask) if largest else prediction.mask
        return Cutout(picture, mask, prediction.model, list(prediction.warnings))

    def remove(self, image: ImageInput, *, background: str | tuple | ImageInput = "transparent",
               feather: float = 0.0, shadow: bool = False, largest: bool = False,
               hard_edges: bool = False, canvas: str | tuple[int, int] | Canvas | None = None,
               margin: float = 0.05, align: str = "center"):
        """The car cut out of `image`: transparent (RGBA) by default, or over `background` (a
        colour name, '#RRGGBB', an (r, g, b) tuple, or an image of any kind `image` may be,
        scaled to cover). Edges are soft (anti-aliased) unless `hard_edges`; `feather` softens
        them inward by that many pixels instead. `shadow` keeps a studio photo's floor shadow
        and gives any other photo a synthetic one. `largest` keeps only the biggest car.
        `canvas` ("1600x1200" or (1600, 1200)) crops to the car and places it on a canvas of
        that size, `margin` (a fraction of the canvas) free on each side, `align` "center" or
        "bottom".

        >>> carmask.remove(np.zeros((480, 640, 3), np.uint8)).shape   # an array in, an array out
        (480, 640, 4)
        """
        result = self.cutout(image, background=background, feather=feather, shadow=shadow,
                             largest=largest, hard_edges=hard_edges, canvas=canvas, margin=margin,
                             align=align)
        return _as_kind(result.image, image)

    def mask(self, image: ImageInput, *, largest: bool = False):
        """The car mask of `image` at its size: a bool (H, W) array for an array, a PIL "L"
        image (0 or 255) for a path or a PIL image, PNG bytes for bytes."""
        _, prediction = self._predict(image)
        mask = largest_car(prediction.mask) if largest else prediction.mask
        if isinstance(image, np.ndarray):
            return mask
        return _as_kind(Image.fromarray(mask.astype(np.uint8) * 255, "L"), image)

    def _predict(self, image: ImageInput):
        """The photo (RGB uint8, full size, upright) and its prediction."""
        predictor = self.predictor
        if isinstance(image, (str, Path, bytes, bytearray)):
            source = bytes(image) if isinstance(image, bytearray) else image
            if isinstance(source, str) and not source:
                raise ValueError("image: an empty path")
            # decoded as `predict_paths` decodes it (libjpeg may shrink it), so the mask is the
            # command line's; the cut-out is composed at full size
            decoded = _read(source, cover=predictor.decode_cover)
            with self._lock:
                prediction = predictor.predict_decoded(decoded.pixels, decoded.size)
            whole = decoded.pixels.shape[:2] == tuple(decoded.size)  # not shrunk: no second decode
            return (decoded.pixels if whole else _read(source).pixels), prediction
        photo = to_rgb(image)
        with self._lock:
            prediction = predictor.predict_decoded(photo, photo.shape[:2])
        return photo, prediction


_sessions: dict[tuple[str, str], Session] = {}  # the module-level calls' sessions
_sessions_lock = threading.Lock()


def load(model: str | Path = "auto", *, quality: str = "fast", tta: bool | None = None,
         threads: int | None = None) -> Session:
    """A `Session` holding the models, for many calls (`quality`: see `Session`)."""
    return Session(model, quality=quality, tta=tta, threads=threads)


def _session(model: str | Path, quality: str) -> Session:
    with _sessions_lock:
        key = (str(model), quality)
        if key not in _sessions:
            _sessions[key] = Session(model, quality=quality)
        return _sessions[key]


def remove(image: ImageInput, *, background: str | tuple | ImageInput = "transparent",
           feather: float = 0.0, shadow: bool = False, largest: bool = False,
           hard_edges: bool = False, canvas: str | tuple[int, int] | None = None,
           margin: float = 0.05, align: str = "center", model: str | Path = "auto",
           quality: str = "fast"):
    """The car cut out of `image`, of the kind given (see `Session.remove`; `quality` "best"
    adds flip TTA and the outline refiner, see `Session`). The models load on the first call
    and stay loaded; `carmask.load()` gives a session of your own.

    >>> import carmask
    >>> carmask.remove("car.jpg", background="white").save("car-white.jpg")
    """
    return _session(model, quality).remove(image, background=background, feather=feather, shadow=shadow,
                                  largest=largest, hard_edges=hard_edges, canvas=canvas,
                                  margin=margin, align=align)


def mask(image: ImageInput, *, largest: bool = False, model: str | Path = "auto",
         quality: str = "fast"):
    """The car mask of `image` (see `Session.mask`; `quality`: see `Session`).

    >>> carmask.mask("car.jpg").save("car-mask.png")
    """
    return _session(model, quality).mask(image, largest=largest)


# -- inputs ------------------------------------------------------------------------------------
def to_rgb(image: ImageInput) -> np.ndarray:
    """Any accepted image → RGB uint8 (H, W, 3), upright; ValueError says what was expected."""
    if isinstance(image, (str, Path, bytes, bytearray)):
        return _read(bytes(image) if isinstance(image, bytearray) else image).pixels
    if isinstance(image, Image.Image):
        return _pil_to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise ValueError(f"image must be a path, bytes, a PIL image or a numpy array, got "
                     f"{type(image).__name__}")


def _read(source, cover=None):
    try:
        return read_photo(source, cover=cover, name="image" if isinstance(source, bytes) else None)
    except DataError as error:
        raise ValueError(str(error)) from None
    except OSError as error:
        raise ValueError(f"{source}: {error.strerror or error}") from None


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode == "F":  # a float picture: 0..1, as float arrays are
        return _array_to_rgb(np.asarray(image, dtype=np.float32))
    return np.asarray(eight_bit(image).convert("RGB"))  # 16-bit greyscale scaled, not clipped


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    expected = "an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, uint8 or float in 0..1"
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        channels = array.shape[2]
    elif array.ndim == 2:
        channels = 0
    else:
        raise ValueError(f"image array of shape {array.shape}: expected {expected}")
    if min(array.shape[:2]) < 1:
        raise ValueError(f"image array of shape {array.shape} is empty")
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("image array holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ValueError(f"float image values span {low:g}..{high:g}: expected 0..1 (or pass "
                             "uint8 0..255)")
        pixels = (array * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype == np.uint16:
        pixels = (array / 257.0 + 0.5).astype(np.uint8)
    else:
        raise ValueError(f"image array of dtype {array.dtype}: expected {expected}")
    if channels == 0:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    elif channels == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif channels == 4:
        pixels = pixels[..., :3]
    return np.ascontiguousarray(pixels)


def _options(background, feather, shadow, largest, hard_edges, canvas, margin, align) -> CutoutOptions:
    try:
        if Canvas.asked_without_canvas(canvas, margin, align):
            raise CutoutError("margin and align place the car on a canvas: give canvas too, "
                              "e.g. canvas='1600x1200'")
        if isinstance(canvas, str):
            canvas = Canvas.parse(canvas, margin, align)
        elif isinstance(canvas, tuple):
            canvas = Canvas(tuple(int(side) for side in canvas), margin, align)
        return CutoutOptions(_background(background), float(feather), bool(shadow), bool(largest),
                             bool(hard_edges), canvas)
    except CutoutError as error:
        raise ValueError(str(error)) from None


def _background(spec) -> Background:
    try:
        if isinstance(spec, Background):
            return spec
        if spec is None:
            return TRANSPARENT
        if isinstance(spec, tuple):
            if len(spec) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in spec):
                raise ValueError(f"background colour {spec!r}: expected (r, g, b) with 0..255 each")
            return Background("color", color=tuple(int(c) for c in spec))
        if isinstance(spec, str) and not Path(spec).is_file():
            return parse_background(spec, allow_files=False)
        return Background.from_image(to_rgb(spec))
    except CutoutError as error:
        raise ValueError(str(error)) from None


def _as_kind(picture: Image.Image, given: ImageInput):
    """The result as the kind of input it came from."""
    if isinstance(given, np.ndarray):
        return np.asarray(picture)
    if isinstance(given, (bytes, bytearray)):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=3)
        return buffer.getvalue()
    return picture
