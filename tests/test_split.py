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


def test_recorded_validation_cars_are_used_exactly(records):
    from carmask.data.split import SplitError, recorded_validation
    cars = sorted({r.car_id for r in records})
    wanted = cars[3:7]
    chosen = recorded_validation(records, {"val_car_ids": wanted, "fold": 0, "folds": 10})
    assert sorted({r.car_id for r in chosen}) == wanted  # the list wins over fold/folds
    assert len(chosen) == sum(r.car_id in wanted for r in records)
    with pytest.raises(SplitError, match="1 of the model's 5 validation cars are not in this folder"):
        recorded_validation(records, {"val_car_ids": wanted + ["f" * 12]})


def test_a_split_recorded_over_another_number_of_cars_is_refused(records):
    """Re-creating fold 0 over a grown folder deals its cars out differently: training cars
    would be scored as if held out."""
    from carmask.data.split import SplitError, recorded_validation
    cars = len({r.car_id for r in records})
    old = {"fold": 0, "folds": 10, "seed": 0, "train_cars": cars - 70, "val_cars": 10}
    with pytest.raises(SplitError, match=f"made over {cars - 60} cars; this folder has {cars}"):
        recorded_validation(records, old)
    same = dict(old, train_cars=cars - 10)
    assert recorded_validation(records, same) == split_by_car(records, 0, 10, 0, True)[1]


def test_evaluate_cars_val_refuses_a_folder_without_the_models_cars(small_real_folder):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "carmask", "evaluate", "--data", str(small_real_folder),
                             "--cars", "val"], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--cars val: 10 of the model's 10 validation cars are not in this folder" in result.stderr
