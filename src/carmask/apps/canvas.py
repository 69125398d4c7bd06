"""A dealer's standard canvas: the car cropped, scaled to fit within a margin, placed on a
fixed-size picture, the same way for every photo of a batch; and a shadow for any photo."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ALIGNS = ("center", "bottom")


@dataclass(frozen=True)
class Canvas:
    """`size` (width, height) in pixels; `margin` a fraction of the canvas kept free on each
    side (of its width left and right, of its height top and bottom); `align` "center", or
    "bottom" (the car stands on the bottom margin, centred across)."""
    size: tuple[int, int]
    margin: float = 0.05
    align: str = "center"

    def __post_init__(self) -> None:
        width, height = self.size
        if not (16 <= width <= 10000 and 16 <= height <= 10000):
            raise ValueError(f"canvas {width}x{height}: each side must be 16..10000 pixels")
        if not 0 <= self.margin < 0.5:
            raise ValueError(f"canvas margin {self.margin}: must be at least 0 and under 0.5")
        if self.align not in ALIGNS:
            raise ValueError(f"canvas align {self.align!r}: must be one of {', '.join(ALIGNS)}")

    @staticmethod
    def asked_without_canvas(canvas, margin: float, align: str) -> bool:
        """Whether a margin or an alignment other than the defaults comes without a canvas to
        place the car on (every surface refuses it)."""
        return not canvas and (margin != Canvas.margin or align != Canvas.align)

    @classmethod
    def parse(cls, text: str, margin: float = 0.05, align: str = "center") -> Canvas:
        """'1600x1200' (WIDTHxHEIGHT) → a Canvas; ValueError naming what is wrong."""
        parts = text.lower().replace(" ", "").split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"canvas {text!r}: expected WIDTHxHEIGHT, such as 1600x1200")
        return cls((int(parts[0]), int(parts[1])), margin, align)

    def placement(self, box: tuple[int, int, int, int]) -> tuple[float, int, int]:
        """For the car's box (x0, y0, x1, y1, exclusive) in the photo: the scale, and where its
        top-left corner lands on the canvas."""
        width, height = self.size
        free_w, free_h = width * (1 - 2 * self.margin), height * (1 - 2 * self.margin)
        box_w, box_h = box[2] - box[0], box[3] - box[1]
        scale = min(free_w / box_w, free_h / box_h)
        left = round((width - box_w * scale) / 2)
        if self.align == "bottom":
            top = round(height - height * self.margin - box_h * scale)
        else:
            top = round((height - box_h * scale) / 2)
        return scale, left, top


def box_of(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """The bounding box (x0, y0, x1, y1, exclusive) of the pixels with any opacity."""
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def place(premultiplied: np.ndarray, opacity: np.ndarray, car: np.ndarray, canvas: Canvas
          ) -> tuple[np.ndarray, np.ndarray]:
    """The layer (premultiplied colour float32 (H, W, 3), opacity float32 (H, W) 0..1) cropped
    to the car's box (`car`: the mask, without its shadow, so every car gets the same margins),
    scaled and placed on the canvas: the two at the canvas size. What lies outside the box (a
    shadow's blur) is kept as far as the canvas reaches."""
    width, height = canvas.size
    box = box_of(car) or (0, 0, opacity.shape[1], opacity.shape[0])
    scale, left, top = canvas.placement(box)
    # canvas (u, v) shows photo ((u - left) / scale + x0, (v - top) / scale + y0)
    matrix = np.float32([[scale, 0, left - box[0] * scale], [0, scale, top - box[1] * scale]])
    if scale < 1:  # shrinking: area-average first (a warp would alias), then only shift
        small = (max(1, round(opacity.shape[1] * scale)), max(1, round(opacity.shape[0] * scale)))
        premultiplied = cv2.resize(premultiplied, small, interpolation=cv2.INTER_AREA)
        opacity = cv2.resize(opacity, small, interpolation=cv2.INTER_AREA)
        matrix = np.float32([[1, 0, left - box[0] * scale], [0, 1, top - box[1] * scale]])
    warp = dict(dsize=(width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                borderValue=0)
    premultiplied = cv2.warpAffine(premultiplied, matrix, **warp)
    opacity = np.clip(cv2.warpAffine(opacity, matrix, **warp), 0, 1)
    return premultiplied.astype(np.float32), opacity.astype(np.float32)


def ground_shadow(mask: np.ndarray, strength: float = 0.55) -> np.ndarray:
    """A synthetic shadow from the mask alone, float32 opacity (H, W) 0..1: a soft ellipse
    under the car (a drop shadow) and darker contact patches where its lowest points (the
    wheels) meet the ground. Made at most 1024 pixels wide, then enlarged: well under a second
    for a 24-megapixel photo. Never the photo's own pixels, so no road or floor shows."""
    height, width = mask.shape
    if not mask.any():
        return np.zeros((height, width), np.float32)
    factor = min(1.0, 1024 / max(height, width))
    small_size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = cv2.resize(mask.astype(np.uint8) * 255, small_size, interpolation=cv2.INTER_AREA) > 127
    h, w = small.shape
    ys, xs = np.flatnonzero(small.any(axis=1)), np.flatnonzero(small.any(axis=0))
    if ys.size == 0:
        return np.zeros((height, width), np.float32)
    car_h, car_w = ys[-1] - ys[0] + 1, xs[-1] - xs[0] + 1
    ground = ys[-1]
    shadow = np.zeros((h, w), np.float32)
    # the drop shadow: a flat ellipse the car's width, on the ground line
    centre = (int((xs[0] + xs[-1]) / 2), int(ground))
    axes = (max(1, int(car_w * 0.52)), max(1, int(car_h * 0.07)))
    cv2.ellipse(shadow, centre, axes, 0, 0, 360, 0.5, thickness=-1)
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(1.0, car_w * 0.035))
    # contact: under every column whose lowest car pixel is near the ground (wheels, sills)
    lowest = np.where(small.any(axis=0), h - 1 - np.argmax(small[::-1], axis=0), -1)
    near = (lowest >= 0) & (lowest >= ground - 0.06 * car_h)
    contact = np.zeros((h, w), np.float32)
    depth = max(1, int(round(0.015 * car_h)))
    for x in np.flatnonzero(near):
        contact[lowest[x]:min(h, lowest[x] + depth + 1), x] = 1.0
    contact = cv2.GaussianBlur(contact, (0, 0), max(0.8, car_w * 0.006))
    shadow = np.clip(shadow + 0.9 * contact / max(1e-6, contact.max()), 0, 1) * strength
    shadow[shadow < 1e-3] = 0  # a blur's far tails are subnormal floats: slow to compute with
    return cv2.resize(shadow, (width, height), interpolation=cv2.INTER_LINEAR)
