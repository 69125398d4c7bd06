"""Where a mask's wrong pixels are: by distance to the true outline, false car against missed car,
and the full-resolution crop of a photo where they crowd most.

Distance is in photo pixels from the outline: 1 is the first pixel outside (a false car pixel)
or inside (a missed car pixel) the true outline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

# Upper edges of the distance bins (px); the last bin is everything farther.
DISTANCE_BINS: tuple[int, ...] = (1, 2, 3, 4, 8, 16)


def bin_labels(bins: Sequence[int] = DISTANCE_BINS) -> list[str]:
    labels, low = [], 1
    for high in bins:
        labels.append(str(high) if high == low else f"{low}-{high}")
        low = high + 1
    return labels + [f">{bins[-1]}"]


def distance_to_outline(truth: np.ndarray) -> np.ndarray:
    """Per pixel, the distance in pixels (float32, ≥ 1 for every pixel) to the nearest pixel on
    the other side of the true outline."""
    truth8 = truth.astype(np.uint8)
    outside = cv2.distanceTransform(1 - truth8, cv2.DIST_L2, 5)  # to the nearest car pixel
    inside = cv2.distanceTransform(truth8, cv2.DIST_L2, 5)  # to the nearest background pixel
    return np.where(truth, inside, outside)


@dataclass
class OutlineErrors:
    """Wrong pixels counted by distance bin, for false car and missed car, over many images."""

    bins: tuple[int, ...] = DISTANCE_BINS
    false_car: np.ndarray = field(default_factory=lambda: np.zeros(len(DISTANCE_BINS) + 1, np.int64))
    missed_car: np.ndarray = field(default_factory=lambda: np.zeros(len(DISTANCE_BINS) + 1, np.int64))
    images: int = 0

    def add(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        distance = distance_to_outline(truth)
        edges = np.asarray(self.bins, np.float32) + 0.5  # DIST_L2 with a 5x5 mask is not integral
        for wrong, counts in ((prediction & ~truth, self.false_car), (~prediction & truth, self.missed_car)):
            counts += np.bincount(np.searchsorted(edges, distance[wrong]), minlength=len(counts))
        self.images += 1

    @property
    def wrong(self) -> int:
        return int(self.false_car.sum() + self.missed_car.sum())

    def table(self) -> list[dict]:
        """One row per distance bin: false and missed car pixels per image, and the share of all
        wrong pixels that lie within that distance."""
        per_image = max(1, self.images)
        total = max(1, self.wrong)
        cumulative = np.cumsum(self.false_car + self.missed_car)
        return [{"distance (px)": label,
                 "false car / image": round(float(self.false_car[i]) / per_image, 1),
                 "missed car / image": round(float(self.missed_car[i]) / per_image, 1),
                 "share within": f"{100 * cumulative[i] / total:.1f}%"}
                for i, label in enumerate(bin_labels(self.bins))]


def worst_window(prediction: np.ndarray, truth: np.ndarray, size: int = 192) -> tuple[int, int, int]:
    """(top, left, wrong pixels) of the size x size window holding the most wrong pixels."""
    wrong = (prediction != truth).astype(np.float32)
    counts = cv2.boxFilter(wrong, -1, (size, size), normalize=False, borderType=cv2.BORDER_CONSTANT)
    y, x = np.unravel_index(int(np.argmax(counts)), counts.shape)
    height, width = truth.shape
    top = int(np.clip(y - size // 2, 0, max(0, height - size)))
    left = int(np.clip(x - size // 2, 0, max(0, width - size)))
    return top, left, int(wrong[top:top + size, left:left + size].sum())


def paint_errors(photo: np.ndarray, prediction: np.ndarray, truth: np.ndarray,
                 colours: dict[str, tuple[int, int, int]]) -> np.ndarray:
    """A copy of `photo` with false car and missed car pixels painted in (all three the same
    size, e.g. the crop of a worst_window)."""
    painted = photo.copy()
    painted[prediction & ~truth] = colours["fp"]
    painted[~prediction & truth] = colours["fn"]
    return painted
