"""The synthetic studio data set: exact Kaggle layout, exact masks, determinism, argument checks."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carmask.kaggle import rle
from carmask.data.layout import index_dataset
from carmask.data.synth import SynthSummary, synthesize

NAME = re.compile(r"^[0-9a-f]{12}_(0[1-9]|1[0-6])$")
SIZE = (160, 96)  # (width, height): small for speed, not 3:2 on purpose
VIEWS = [f"{v:02d}" for v in range(1, 17)]
QUOTED_ROW = re.compile(r'^"[^"]*"(,"[^"]*"){5}$')


def make(root: Path, seed: int = 7, **kwargs) -> SynthSummary:
    return synthesize(root, **{"cars": 3, "test_cars": 1, "size": SIZE, "seed": seed, **kwargs})


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return make(tmp_path_factory.mktemp("synth") / "data")


def mask_of(root: Path, split: str, name: str) -> np.ndarray:
    return np.asarray(Image.open(root / f"{split}_masks" / f"{name}_mask.gif"))


def split_of(synth: SynthSummary, car: str) -> str:
    return "train" if car in synth.train_cars else "test"


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_summary(synth: SynthSummary) -> None:
    assert len(synth.train_cars) == 3 and len(synth.test_cars) == 1
    assert synth.images == 4 * 16
    assert synth.size == SIZE
    assert synth.train_cars == sorted(synth.train_cars)
    assert not set(synth.train_cars) & set(synth.test_cars)
    assert all(re.fullmatch(r"[0-9a-f]{12}", car) for car in synth.train_cars + synth.test_cars)


def test_layout_names_and_counts(synth: SynthSummary) -> None:
    root = synth.root
    for split, cars in (("train", synth.train_cars), ("test", synth.test_cars)):
        images = sorted(p.stem for p in (root / split).iterdir())
        masks = sorted(p.name.removesuffix("_mask.gif") for p in (root / f"{split}_masks").iterdir())
        assert images == sorted(f"{car}_{v}" for car in cars for v in VIEWS)
        assert masks == images  # every image has exactly one mask, nothing else is there
        assert all(NAME.match(name) for name in images)
        assert all(p.suffix == ".jpg" for p in (root / split).iterdir())
    assert sorted(p.name for p in root.iterdir()) == [
        ".carmask-synth", "metadata.csv", "sample_submission.csv", "test", "test_masks", "train", "train_masks",
        "train_masks.csv"]


def test_images_are_rgb_jpegs_of_the_size(synth: SynthSummary) -> None:
    for path in list((synth.root / "train").iterdir()) + list((synth.root / "test").iterdir()):
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", SIZE), path


def test_masks_are_single_frame_palette_gifs_with_values_0_1(synth: SynthSummary) -> None:
    for split in ("train_masks", "test_masks"):
        for path in (synth.root / split).iterdir():
            with Image.open(path) as gif:
                assert (gif.format, gif.mode, gif.size) == ("GIF", "P", SIZE), path
                assert getattr(gif, "n_frames", 1) == 1
                assert set(np.unique(np.asarray(gif)).tolist()) == {0, 1}, path


def test_train_masks_csv_decodes_to_the_gif_masks(synth: SynthSummary) -> None:
    with open(synth.root / "train_masks.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["img", "rle_mask"]
    names = [img for img, _ in rows[1:]]
    assert names == sorted(f"{car}_{v}.jpg" for car in synth.train_cars for v in VIEWS)
    width, height = SIZE
    for img, code in rows[1:]:
        assert rle.validate(code, (height, width)) is None
        decoded = rle.decode(code, (height, width))
        np.testing.assert_array_equal(decoded, mask_of(synth.root, "train", img[:-4]) == 1, err_msg=img)


def test_coverage_is_plausible(synth: SynthSummary) -> None:
    for split in ("train_masks", "test_masks"):
        for path in (synth.root / split).iterdir():
            coverage = np.asarray(Image.open(path)).mean()
            assert 0.03 <= coverage <= 0.60, (path.name, coverage)


def test_side_views_are_wider_than_front_and_rear_views(synth: SynthSummary) -> None:
    def width(car: str, view: str) -> int:
        cols = np.flatnonzero(mask_of(synth.root, split_of(synth, car), f"{car}_{view}").any(axis=0))
        return int(cols[-1] - cols[0] + 1)

    for car in synth.train_cars + synth.test_cars:
        side = min(width(car, "05"), width(car, "13"))
        end_on = max(width(car, "01"), width(car, "09"))
        assert side > 1.5 * end_on, (car, side, end_on)


def test_every_car_is_one_connected_blob_inside_the_frame(synth: SynthSummary) -> None:
    import cv2

    for car in synth.train_cars + synth.test_cars:
        for view in VIEWS:
            mask = mask_of(synth.root, split_of(synth, car), f"{car}_{view}").astype(np.uint8)
            count, _ = cv2.connectedComponents(mask)
            assert count == 2, (car, view)  # background + one car
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_the_floor_shadow_is_in_the_photo_but_not_in_the_mask(synth: SynthSummary) -> None:
    for car in synth.train_cars:
        name = f"{car}_05"
        grey = np.asarray(Image.open(synth.root / "train" / f"{name}.jpg").convert("L"), dtype=float)
        mask = mask_of(synth.root, "train", name).astype(bool)
        ys, xs = np.nonzero(mask)
        row = min(ys.max() + 2, SIZE[1] - 1)  # just under the car, outside its mask
        middle = (xs.min() + xs.max()) // 2
        assert not mask[row].any()
        under = grey[row, middle - 5:middle + 5].mean()
        open_floor = np.r_[grey[row, :3], grey[row, -3:]].mean()
        assert under < open_floor - 15, (name, under, open_floor)


def test_the_hard_case_of_a_car_as_light_as_the_backdrop_is_present(synth: SynthSummary) -> None:
    def lightness(car: str) -> tuple[float, float]:
        name, split = f"{car}_05", split_of(synth, car)
        grey = np.asarray(Image.open(synth.root / split / f"{name}.jpg").convert("L"), dtype=float)
        mask = mask_of(synth.root, split, name).astype(bool)
        return float(np.percentile(grey[mask], 75)), float(np.median(grey[~mask]))

    cars = synth.train_cars + synth.test_cars
    assert any(paint >= backdrop for paint, backdrop in map(lightness, cars))
    assert any(paint < backdrop - 40 for paint, backdrop in map(lightness, cars))  # and contrast


def test_metadata_lists_every_car_once_quoted_like_kaggle(synth: SynthSummary) -> None:
    lines = (synth.root / "metadata.csv").read_text().splitlines()
    assert lines[0] == '"id","year","make","model","trim1","trim2"'
    assert all(QUOTED_ROW.match(line) for line in lines), lines
    with open(synth.root / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ids = [row["id"] for row in rows]
    assert sorted(ids) == sorted(synth.train_cars + synth.test_cars)
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    for row in rows:
        assert 2000 <= int(row["year"]) <= 2020 and row["make"] and row["model"]
        assert row["trim1"] == row["model"]


def test_sample_submission_lists_every_test_image_once(synth: SynthSummary) -> None:
    with open(synth.root / "sample_submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["img", "rle_mask"]
    names = [img for img, _ in rows[1:]]
    assert names == sorted(p.name for p in (synth.root / "test").iterdir())
    assert len(names) == 16 * len(synth.test_cars) == len(set(names))
    assert {code for _, code in rows[1:]} == {"1 1"}


def test_the_projects_own_indexer_finds_no_problem(synth: SynthSummary) -> None:
    index = index_dataset(synth.root, deep=True)
    assert index.problems == []
    summary = index.summary()
    assert (summary["train_cars"], summary["train_images"], summary["masks"]) == (3, 48, 48)
    assert summary["test_images"] == 16
    assert summary["image_sizes"] == {f"{SIZE[0]}x{SIZE[1]}": 64}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first, second = all_files(make(tmp_path / "a").root), all_files(make(tmp_path / "b").root)
    assert len(first) == 4 + 4 * 16 * 2  # CSVs, marker, 4 folders of 16 views x 2 cars
    assert first == second


def test_a_different_seed_gives_a_different_set(tmp_path: Path) -> None:
    a, b = make(tmp_path / "a", seed=1), make(tmp_path / "b", seed=2)
    assert not set(a.train_cars + a.test_cars) & set(b.train_cars + b.test_cars)
    assert (a.root / "train_masks.csv").read_bytes() != (b.root / "train_masks.csv").read_bytes()


def test_progress_goes_through_track_and_nothing_is_printed(tmp_path: Path, capsys) -> None:
    calls = []

    def track(iterable, total=None, description=""):
        calls.append((total, description))
        yield from iterable

    make(tmp_path / "data", cars=2, test_cars=0, track=track)
    assert len(calls) == 1 and calls[0][0] == 2 and calls[0][1]
    assert capsys.readouterr() == ("", "")


def test_zero_test_cars_writes_an_empty_test_set(tmp_path: Path) -> None:
    summary = make(tmp_path / "data", cars=1, test_cars=0)
    assert summary.test_cars == [] and summary.images == 16
    assert (summary.root / "sample_submission.csv").read_text() == "img,rle_mask\n"
    assert not any((summary.root / "test").iterdir())


@pytest.mark.parametrize("kwargs, message", [
    ({"cars": 0}, "cars"),
    ({"cars": -3}, "cars"),
    ({"cars": 2.5}, "cars"),
    ({"test_cars": -1}, "test_cars"),
    ({"size": (63, 48)}, "minimum"),
    ({"size": (64, 47)}, "minimum"),
    ({"size": (0, 0)}, "minimum"),
    ({"size": (160,)}, "width, height"),
    ({"size": (160.0, 96)}, "width, height"),
])
def test_bad_arguments_raise_value_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make(tmp_path / "data", **kwargs)
    assert not (tmp_path / "data").exists()  # checked before anything is written


def test_the_smallest_size_works(tmp_path: Path) -> None:
    summary = make(tmp_path / "data", cars=1, test_cars=0, size=(64, 48))
    mask = mask_of(summary.root, "train", f"{summary.train_cars[0]}_05")
    assert mask.shape == (48, 64) and 0.03 <= mask.mean() <= 0.60


@pytest.mark.slow
def test_kaggle_size_works(tmp_path: Path) -> None:
    summary = make(tmp_path / "data", cars=1, test_cars=0, size=(1918, 1280))
    name = f"{summary.train_cars[0]}_03"
    with Image.open(summary.root / "train" / f"{name}.jpg") as image:
        assert image.size == (1918, 1280)
    mask = mask_of(summary.root, "train", name)
    assert mask.shape == (1280, 1918) and 0.05 <= mask.mean() <= 0.45


def test_rerun_replaces_its_own_folder_and_refuses_others(tmp_path):
    out = tmp_path / "synth"
    synthesize(out, cars=3, test_cars=0, size=(96, 64), seed=0)
    synthesize(out, cars=1, test_cars=0, size=(96, 64), seed=1)
    assert len(list((out / "train").glob("*.jpg"))) == 16  # nothing stale from the 3-car run
    precious = tmp_path / "kaggle"
    precious.mkdir()
    (precious / "metadata.csv").write_text("id\n")
    with pytest.raises(ValueError, match="not empty and was not written by carmask"):
        synthesize(precious, cars=1, size=(96, 64))
    assert (precious / "metadata.csv").read_text() == "id\n"


def test_the_wall_sign_can_be_left_out(synth: SynthSummary, tmp_path: Path) -> None:
    bare = make(tmp_path / "bare", sign=False)
    assert bare.train_cars == synth.train_cars  # same cars, same views: only the wall differs
    for car in synth.train_cars:
        name = f"{car}_01"
        mask = mask_of(synth.root, "train", name).astype(bool)
        assert np.array_equal(mask, mask_of(bare.root, "train", name).astype(bool))
        signed, plain = (np.asarray(Image.open(root / "train" / f"{name}.jpg").convert("L"), dtype=float)
                         for root in (synth.root, bare.root))
        wall = ~mask
        wall[SIZE[1] // 2:] = False  # the upper half, where the sign hangs
        assert np.abs(signed - plain)[wall].max() > 60  # dark lettering on the signed wall
        assert plain[wall].std() < signed[wall].std()  # and a smooth wall without it
