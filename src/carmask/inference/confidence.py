"""How sure a model is of a mask, from its probability map, and the warnings a user should see.

A model that knows a photo's kind is sure almost everywhere: its unsure pixels (probability
between 0.1 and 0.9) form a thin band along the car's outline. On a photo unlike anything it was
trained on they spread into blobs and speckles. The signal is the unsure area per car area, so a
small car with a clean outline is not flagged. The limits were set on the held-out photos (see
docs/models.md, "Confidence").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNSURE_BAND = (0.1, 0.9)
NO_CAR_SHARE = 0.002  # a mask under 0.2% of the photo: no car, or cars too small to trust
UNSURE_LIMIT = 0.25  # unsure pixels per car pixel above this: say the mask may be wrong
MIN_CAR_AREA = 0.01  # the car area never counts as less than 1% of the photo


@dataclass(frozen=True)
class Confidence:
    car_share: float  # share of the photo the mask covers
    unsure_share: float  # unsure pixels per car pixel

    @property
    def warnings(self) -> list[str]:
        if self.car_share == 0:
            return ["no car found in this photo"]
        if self.car_share < NO_CAR_SHARE:
            share = f"{self.car_share:.2%}" if self.car_share >= 0.0001 else "under 0.01%"
            return [f"only a speck of car found ({share} of the photo): it may hold no car, or "
                    "cars too small to mask well"]
        if self.unsure_share > UNSURE_LIMIT:
            return [f"the model is unsure of much of this mask ({self.unsure_share:.0%} of the car's "
                    "area): the photo may be unlike those it knows; check the cut-out"]
        return []

    def as_json(self) -> dict:
        return {"car_share": round(self.car_share, 4), "unsure_share": round(self.unsure_share, 4)}


def assess(probability: np.ndarray) -> list[Confidence]:
    """The confidence of each (h, w) car probability map of an (N, h, w) batch. The maps are at
    the model's size: the signal does not need the full resolution."""
    total = probability.shape[-2] * probability.shape[-1]
    return [confidence_from_counts(int(car), int(unsure), total)
            for car, unsure in zip((probability > 0.5).sum((1, 2)),
                                   ((probability > UNSURE_BAND[0]) & (probability < UNSURE_BAND[1])).sum((1, 2)))]


def confidence_from_counts(car: int, unsure: int, total: int) -> Confidence:
    """A Confidence from a map's car and unsure pixel counts among its `total` pixels (counted
    wherever the map is: a GPU sends back just the two numbers)."""
    return Confidence(car / total, unsure / max(car, MIN_CAR_AREA * total))
