"""Car-grouped k-fold splits: the 16 views of one car always land on the same side.

Splitting by image would put near-identical views of a car in both training and validation and
inflate the validation Dice; Kaggle's test set has no car in common with its training set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from carmask.data.layout import Record


def assign_folds(
    records: Sequence[Record], folds: int = 5, seed: int = 0, stratify_by_make: bool = False
) -> dict[str, int]:
    """Map every car id to a fold in 0..folds-1, deterministically for a seed.

    With `stratify_by_make`, cars are dealt round-robin within each make (rare makes first), so
    every fold gets a similar mix of makes and fold sizes differ by at most one car.
    """
    cars = sorted({r.car_id for r in records})
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if len(cars) < folds:
        raise ValueError(f"cannot split {len(cars)} cars into {folds} folds")
    rng = np.random.default_rng(seed)
    if stratify_by_make:
        make_of = {r.car_id: r.make or "?" for r in records}
        groups: dict[str, list[str]] = defaultdict(list)
        for car in cars:
            groups[make_of[car]].append(car)
        ordered: list[str] = []
        for make in sorted(groups, key=lambda m: (len(groups[m]), m)):
            ordered.extend(rng.permutation(groups[make]).tolist())
    else:
        ordered = rng.permutation(cars).tolist()
    # A random rotation of the fold numbers keeps the first fold from always getting extra cars.
    offset = int(rng.integers(folds))
    return {car: (position + offset) % folds for position, car in enumerate(ordered)}


def split_by_car(
    records: Sequence[Record],
    fold: int = 0,
    folds: int = 5,
    seed: int = 0,
    stratify_by_make: bool = False,
) -> tuple[list[Record], list[Record]]:
    """Return (train, validation) records with the cars of `fold` held out."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    fold_of = assign_folds(records, folds, seed, stratify_by_make)
    train = [r for r in records if fold_of[r.car_id] != fold]
    validation = [r for r in records if fold_of[r.car_id] == fold]
    return train, validation


class SplitError(ValueError):
    """A model's recorded validation split cannot be applied to this data folder."""


def recorded_validation(records: Sequence[Record], training: dict) -> list[Record]:
    """The records of the cars a model was validated on, as its training summary records them.

    Newer model files list the validation car ids; every one of them must be in `records`, or
    the evaluation would quietly cover fewer cars. Older files record only fold/folds/seed: the
    split is re-created from them, but only when the folder still holds exactly as many cars
    as the model saw, since the same seed deals a grown folder's cars out differently.
    """
    cars = {r.car_id for r in records}
    if training.get("val_car_ids"):
        wanted = list(training["val_car_ids"])
        missing = [car for car in wanted if car not in cars]
        if missing:
            raise SplitError(f"{len(missing)} of the model's {len(wanted)} validation cars are not in "
                             f"this folder ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
        return [r for r in records if r.car_id in set(wanted)]
    if "fold" not in training:
        raise SplitError("this model file does not record its validation cars; pass --cars instead")
    seen = training.get("train_cars", 0) + training.get("val_cars", 0)
    if len(cars) != seen:
        raise SplitError(f"this model file records only its split (fold {training['fold']} of "
                         f"{training['folds']}), made over {seen} cars; this folder has {len(cars)}, so "
                         "re-creating the split would mix training cars into validation; pass --cars")
    return split_by_car(records, training["fold"], training["folds"], training.get("seed", 0),
                        stratify_by_make=True)[1]
