"""Cut cars out of photos: alpha from the predicted mask, soft edges, the studio's floor shadow
or a synthetic one, composites over a colour or another image, at the photo's full resolution or
on a canvas.

Everything here works on arrays, so the command line (files), the API, the service (uploads)
and the demo share it; `carmask.apps.batch` is the batch job behind `carmask cutout`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageColor

from carmask.apps.canvas import Canvas, box_of, ground_shadow, place
from carmask.data.io import DataError, read_photo

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif")
FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}
# The most pixels a side each format holds: libwebp's limit, and libjpeg's (below the 65535 of
# JPEG's header). PNG's, 2^31 - 1, is beyond any picture that fits in memory.
MAX_SIDE = {"png": 2**31 - 1, "webp": 16383, "jpg": 65500}


class CutoutError(ValueError):
    """An option or input the cut-out cannot use; the message says which and why."""


class EncodeError(CutoutError):
    """A picture its format cannot hold (`code` too_large_for_format), or one its encoder
    failed on (cannot_encode); the message starts with "format" and says what to do."""

    def __init__(self, message: str, code: str = "cannot_encode") -> None:
        super().__init__(message)
        self.code = code


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
        if len(color) == 4 and color[3] == 0:  # rgba(..., 0), #RRGGBB00: fully clear
            return TRANSPARENT
        if len(color) == 4 and color[3] != 255:  # never silently drop the alpha asked for
            raise CutoutError(f"background {spec!r}: a partly transparent colour is not "
                              "supported; give an opaque colour, or transparent")
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


def soft_alpha(mask: np.ndarray, probability: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """float32 alpha (H, W) that follows the model's probability (uint8 0..255, at the photo's
    size) across the car's outline, so edges are anti-aliased rather than stair-stepped.

    It never disagrees with the mask: alpha > 1/2 exactly on the mask's pixels (its Dice is the
    mask's), 1 inside the car away from the outline (an unsure window shows no background), 0
    outside it, and regions the mask dropped (specks, other cars with --largest) are 0. `scale`,
    the photo's size over the model's, sets how far from the outline the soft edge reaches."""
    reach = max(2, int(np.ceil(2 * scale)))
    kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    mask8 = mask.astype(np.uint8)
    near = cv2.dilate(mask8, kernel) > 0
    core = cv2.erode(mask8, kernel, borderType=cv2.BORDER_REPLICATE) > 0
    alpha = probability.astype(np.float32) * np.float32(1 / 255)
    return np.where(core, np.float32(1), np.where(
        mask, np.maximum(alpha, np.float32(128 / 255)),
        np.where(near, np.minimum(alpha, np.float32(127 / 255)), np.float32(0))))


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
              feather: float = 0.0, shadow: bool = False, probability: np.ndarray | None = None,
              scale: float = 1.0, studio: bool = True, canvas: Canvas | None = None) -> Image.Image:
    """The car of `photo` (RGB uint8, H x W x 3) over `background`, at the photo's resolution or
    on a `canvas`.

    The alpha is the mask, soft along the outline where the model's `probability` (uint8, the
    photo's size) is given (`soft_alpha`), or feathered inward with `feather`. `shadow` keeps a
    studio photo's own floor shadow (`floor_shadow`) and gives any other photo (`studio` False)
    a synthetic one made from the mask (`ground_shadow`). Transparent gives RGBA (the shadow
    black in the alpha); a colour or an image gives RGB.
    """
    if photo.shape[:2] != mask.shape:
        raise CutoutError(f"mask {mask.shape} does not match photo {photo.shape[:2]}")
    if probability is not None and feather <= 0:
        alpha = soft_alpha(mask, probability, scale)
    else:
        alpha = feathered_alpha(mask, feather)
    # premultiplied: the car's colour times its opacity; a shadow is black, so it adds opacity
    # and no colour, and the car over its shadow has opacity a + s(1 - a)
    premultiplied = photo.astype(np.float32)
    premultiplied *= alpha[..., None]
    opacity = alpha
    if shadow:
        shade = floor_shadow(photo, mask) if studio else ground_shadow(mask)
        opacity = alpha + shade * (1.0 - alpha)
    if canvas is not None:
        premultiplied, opacity = place(premultiplied, opacity, mask, canvas)
    height, width = opacity.shape
    if background.transparent:
        with np.errstate(invalid="ignore", divide="ignore"):
            rgb = np.where(opacity[..., None] > 0, premultiplied / opacity[..., None], 0)
        rgb += 0.5
        return Image.fromarray(np.dstack([rgb.astype(np.uint8), (opacity * 255 + 0.5).astype(np.uint8)]),
                               "RGBA")
    # everything lies within 0..255 here: no clipping pass over the picture is needed
    clear = (1.0 - opacity)[..., None]
    if background.kind == "color":
        premultiplied += clear * np.asarray(background.color, np.float32)
    else:
        premultiplied += clear * cover(background.image, (height, width)).astype(np.float32)
    premultiplied += 0.5
    return Image.fromarray(premultiplied.astype(np.uint8), "RGB")


@dataclass(frozen=True)
class CutoutOptions:
    """The options of a cut-out, by the names the CLI, the API and the service share."""
    background: Background = TRANSPARENT
    feather: float = 0.0
    shadow: bool = False
    largest: bool = False
    hard_edges: bool = False
    canvas: Canvas | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.feather <= 64:
            raise CutoutError(f"feather {self.feather}: must be 0..64 pixels")
        if self.hard_edges and self.feather:
            raise CutoutError("hard_edges and feather: a feathered edge is soft; give one of them")


def render(photo: np.ndarray, prediction, options: CutoutOptions, predictor=None) -> Image.Image:
    """A prediction of `photo` (full size, upright) as the cut-out `options` ask for: the model
    that made it picks the shadow (the studio's own floor, or a synthetic one elsewhere)."""
    mask = largest_car(prediction.mask) if options.largest else prediction.mask
    return composite(photo, mask, options.background, feather=options.feather,
                     shadow=options.shadow,
                     probability=None if options.hard_edges else prediction.probability,
                     scale=model_scale(predictor, photo.shape[:2]) if predictor else 1.0,
                     studio=prediction.model != "general", canvas=options.canvas)


# A car drawn at over twice its photo's pixels looks soft (blobby wheels, blurred badges): a
# listing photo made so should say it.
ENLARGED_LIMIT = 2.0


def with_canvas_warning(prediction, options: CutoutOptions):
    """`prediction`, with a warning added where `options`' canvas enlarges its car past
    ENLARGED_LIMIT (the photo too small for the canvas)."""
    if options.canvas is None or prediction.mask is None:
        return prediction
    box = box_of(largest_car(prediction.mask) if options.largest else prediction.mask)
    if box is None:
        return prediction
    scale = options.canvas.placement(box)[0]
    if scale <= ENLARGED_LIMIT:
        return prediction
    width, height = options.canvas.size
    note = (f"the car is enlarged {scale:.1f}x to fill the {width}x{height} canvas and will look "
            "soft: use a larger photo, or a smaller canvas")
    return replace(prediction, notes=[*prediction.notes, note])


def output_size(photo_shape: tuple[int, ...], options: CutoutOptions) -> tuple[int, int]:
    """(width, height) of the cut-out `options` make of a photo of `photo_shape` (H, W, ...)."""
    return options.canvas.size if options.canvas else (photo_shape[1], photo_shape[0])


def format_problem(size: tuple[int, int], fmt: str) -> str | None:
    """Why a (width, height) picture cannot be written as `fmt` (png, webp, jpg), or None."""
    width, height = size
    limit = MAX_SIDE[fmt]
    if max(width, height) <= limit:
        return None
    return (f"format {fmt} holds at most {limit} pixels a side, and this cut-out is "
            f"{width}x{height}: use png, or a canvas (WIDTHxHEIGHT, up to 10000x10000)")


def check_encodable(size: tuple[int, int], fmt: str) -> None:
    """EncodeError (too_large_for_format) unless `fmt` can hold a (width, height) picture: asked
    before the model runs, so a photo that cannot be written costs no prediction."""
    if problem := format_problem(size, fmt):
        raise EncodeError(problem, "too_large_for_format")


def encode_image(image: Image.Image, fmt: str = "png") -> bytes:
    """PNG, WebP (both keep alpha) or JPEG bytes; JPEG refuses a transparent image. Every
    encoder failure is an EncodeError naming the format and the size, never Pillow's own
    ValueError or OSError (which would read as a crash)."""
    fmt = fmt.lower().lstrip(".").replace("jpeg", "jpg")
    if fmt not in FORMATS:
        raise CutoutError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "jpg" and image.mode == "RGBA":
        raise CutoutError("jpg has no alpha channel: use png or webp for a transparent cut-out, "
                          "or give a background colour or image")
    check_encodable(image.size, fmt)
    buffer = io.BytesIO()
    options = {"png": {"compress_level": 3}, "webp": {"quality": 92, "method": 4},
               "jpg": {"quality": 92}}[fmt]
    try:
        image.save(buffer, format=FORMATS[fmt], **options)
    except (OSError, ValueError) as error:
        raise EncodeError(f"format {fmt}: could not encode this {image.size[0]}x{image.size[1]} "
                          f"{image.mode} cut-out ({error}); try png") from None
    return buffer.getvalue()


def model_scale(predictor, size: tuple[int, int]) -> float:
    """How many photo pixels one model pixel spans (the larger of the two models' inputs)."""
    inputs = [p.size for p in (getattr(predictor, "studio", None), getattr(predictor, "general", None)) if p]
    model = max(inputs or [predictor.size], key=lambda s: s[0] * s[1])
    return max(size[0] / model[0], size[1] / model[1])


def largest_car(mask: np.ndarray) -> np.ndarray:
    """Only the biggest connected region of a bool mask: the main car of a photo with several."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:  # background and at most one region
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
