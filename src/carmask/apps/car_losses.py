"""Where a model loses car (issue 24): two kinds of miss that users report on outdoor photos.

- **Holes**: car pixels the model misses although the mask it draws runs all round them (a hard
  shadow or a bright reflection on the body). A hole is a connected piece (8-connected) of the
  missed car pixels that lies inside the predicted mask once its enclosed gaps are filled; it
  counts as a hole when it is at least MIN_HOLE_PIXELS pixels and HOLE_SHARE of that car.
- **Lower body cut off**: car pixels missed in the lowest LOW_SHARE of each car's height (the
  bumpers, sills and wheels, often in shade by the ground), against the rest of the body. Each
  car is a connected piece of the true mask of at least MIN_CAR_PIXELS pixels.

Both are counted per photo (the COLUMNS) and pooled over photos of a kind.
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

MIN_HOLE_PIXELS = 25
HOLE_SHARE = 0.002  # of the car's pixels
LOW_SHARE = 0.2  # the lowest fifth of a car's height
MIN_CAR_PIXELS = 400
RULE = (f"a hole is a missed piece of car enclosed by the predicted mask, of at least "
        f"{MIN_HOLE_PIXELS} pixels and {HOLE_SHARE:.1%} of the car; the lower body is the lowest "
        f"{LOW_SHARE:.0%} of each car's height (cars of at least {MIN_CAR_PIXELS} pixels)")
COLUMNS = ("car_pixels", "hole_pixels", "holes", "low_pixels", "low_missed", "high_pixels",
           "high_missed")


def filled(mask: np.ndarray) -> np.ndarray:
    """`mask` with every gap it encloses filled: the background not reachable from the border."""
    outside = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    flood = outside.copy()
    cv2.floodFill(flood, None, (0, 0), 2)
    return (flood != 2)[1:-1, 1:-1]


def car_loss_figures(prediction: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """One photo's figures (the COLUMNS) from its predicted and true car masks (bool, same size)."""
    missed = truth & ~prediction
    enclosed = (missed & filled(prediction)).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(enclosed, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    car_pixels = int(truth.sum())
    holes = sizes[(sizes >= MIN_HOLE_PIXELS) & (sizes >= HOLE_SHARE * car_pixels)]
    low = np.zeros_like(truth)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(truth.astype(np.uint8), connectivity=8)
    for car in range(1, count):
        top, height, area = (stats[car, k] for k in (cv2.CC_STAT_TOP, cv2.CC_STAT_HEIGHT, cv2.CC_STAT_AREA))
        if area < MIN_CAR_PIXELS:
            continue
        start = top + height - max(1, round(LOW_SHARE * height))
        low[start:top + height] |= labels[start:top + height] == car
    cars = np.isin(labels, [c for c in range(1, count) if stats[c, cv2.CC_STAT_AREA] >= MIN_CAR_PIXELS])
    high = cars & ~low
    return {"car_pixels": car_pixels, "hole_pixels": int(holes.sum()), "holes": len(holes),
            "low_pixels": int(low.sum()), "low_missed": int((low & missed).sum()),
            "high_pixels": int(high.sum()), "high_missed": int((high & missed).sum())}


def car_loss_summary(per_image: pd.DataFrame) -> dict | None:
    """The pooled figures over the scored photos (None when none was counted)."""
    if "car_pixels" not in per_image or per_image["car_pixels"].isna().all():
        return None
    frame = per_image.dropna(subset=["car_pixels"])
    total = lambda column: int(frame[column].sum())
    share = lambda part, whole: round(total(part) / total(whole), 6) if total(whole) else None
    return {"photos": len(frame), "car_pixels_in_holes": share("hole_pixels", "car_pixels"),
            "photos_with_a_hole": int((frame["holes"] > 0).sum()), "holes": total("holes"),
            "lower_body_missed": share("low_missed", "low_pixels"),
            "upper_body_missed": share("high_missed", "high_pixels"), "rule": RULE}
