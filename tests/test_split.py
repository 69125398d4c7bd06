from collections import Counter
from pathlib import Path

import pytest

from carmask.data import Record, index_dataset
from carmask.data.split import assign_folds, split_by_car


@pytest.fixture(scope="module")
def records(carvana) -> list[Record]:
    return index_dataset(carvana, check_pixels=False).train


@pytest.mark.parametrize("stratify", [False, True])
def test_no_car_on_both_sides_over_many_seeds(records, stratify):
    all_cars = {r.car_id for r in records}
    for seed in range(25):
        for folds in (2, 5, 10):
            fold_of = assign_folds(records, folds, seed, stratify)
            assert set(fold_of) == all_cars
            sizes = Counter(fold_of.values())
            assert set(sizes) == set(range(folds))
            assert max(sizes.values()) - min(sizes.values()) <= 1
            for fold in range(folds):
                train, validation = split_by_car(records, fold, folds, seed, stratify)
                train_cars = {r.car_id for r in train}
                validation_cars = {r.car_id for r in validation}
                assert not train_cars & validation_cars
                assert len(train) + len(validation) == len(records)
                assert all(len([r for r in validation if r.car_id == c]) == 16
                           for c in validation_cars)


def test_deterministic_per_seed_and_different_across_seeds(records):
    assert assign_folds(records, 5, seed=3) == assign_folds(records, 5, seed=3)
    assert assign_folds(records, 5, seed=3) != assign_folds(records, 5, seed=4)


def test_stratified_folds_spread_each_make(records):
    fold_of = assign_folds(records, 5, seed=0, stratify_by_make=True)
    make_of = {r.car_id: r.make for r in records}
    per_make: dict[str, Counter] = {}
    for car, fold in fold_of.items():
        per_make.setdefault(make_of[car], Counter())[fold] += 1
    for make, counts in per_make.items():
        spread = [counts.get(fold, 0) for fold in range(5)]
        assert max(spread) - min(spread) <= 1, (make, spread)


def test_bad_arguments(records):
    with pytest.raises(ValueError, match="fold must be in 0..4"):
        split_by_car(records, fold=5, folds=5)
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds(records, folds=1)
    two = [Record("a_01", "a", 1, Path("a_01.jpg"), None, "train")]
    with pytest.raises(ValueError, match="cannot split 1 cars into 2 folds"):
        assign_folds(two, folds=2)
