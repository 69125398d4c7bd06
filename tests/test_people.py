"""People on street photos (issue 24): the outdoor folder's people masks, the count of people
taken for car by `carmask evaluate`, and people pasted into the general model's training
pictures as negatives, from training frames only."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from carmask.cli import app
from carmask.data.io import DataError, read_mask, read_photo
from carmask.data.wild import VALIDATION_VIDEOS, is_held_out, read_wild, split_wild


def wild_subset(wild, folder, names, people=None):
    """An outdoor folder of links to `names` of the real one, with `people` masks written in
    place of the real ones where given (name -> bool array)."""
    for sub in ("images", "masks", "people"):
        (folder / sub).mkdir(parents=True)
    with (wild / "index.csv").open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["name"] in names]
    for row in rows:
        name = row["name"]
        (folder / "images" / f"{name}.jpg").symlink_to(wild / "images" / f"{name}.jpg")
        (folder / "masks" / f"{name}.png").symlink_to(wild / "masks" / f"{name}.png")
        if people and name in people:
            Image.fromarray(people[name].astype(np.uint8) * 255).save(folder / "people" / f"{name}.png")
        elif (wild / "people" / f"{name}.png").exists():
            (folder / "people" / f"{name}.png").symlink_to(wild / "people" / f"{name}.png")
    with (folder / "index.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)
    return folder


# -- the outdoor folder's people masks ---------------------------------------------------------
def test_street_frames_come_with_their_people_masks_and_a_wrong_size_is_named(wild, tmp_path):
    photos = read_wild(wild)
    streets = [p for p in photos if p.kind == "camvid"]
    assert all(p.people_path is not None and p.people_path.name == f"{p.name}.png" for p in streets)
    assert all(p.people_path is None for p in photos if p.kind == "web")
    name = streets[0].name
    folder = wild_subset(wild, tmp_path / "w", {name}, people={name: np.zeros((100, 120), bool)})
    with pytest.raises(DataError, match=rf"people/{name}\.png: the people mask is 120x100 but its "
                                        rf"photo .*{name}\.jpg is 480x360"):
        read_wild(folder)


# -- the count of people taken for car ---------------------------------------------------------
def test_people_figures_count_person_pixels_called_car_and_people_taken():
    from carmask.apps.people_count import MIN_PERSON_PIXELS, people_figures, people_summary

    people = np.zeros((60, 80), bool)
    people[10:30, 10:15] = True  # a person of 100 pixels
    people[40:45, 60:64] = True  # a sliver of 20: too small to be counted as a person
    called_car = np.zeros_like(people)
    called_car[10:13, 10:15] = True  # 15 of the person's pixels: over 10%
    called_car[40:45, 60:64] = True  # the whole sliver
    assert MIN_PERSON_PIXELS > 20
    figures = people_figures(called_car, people)
    assert figures == {"person_pixels": 120, "person_called_car": 35, "people": 1, "people_taken": 1}
    called_car[12, :] = False  # 10 pixels of 100: not over 10%
    assert people_figures(called_car, people)["people_taken"] == 0

    frame = pd.DataFrame([{"image_id": "a", **figures},
                          {"image_id": "b", **people_figures(called_car, people)},
                          {"image_id": "web", "person_pixels": None}])  # a photo without a people mask
    summary = people_summary(frame)
    assert summary["frames_with_people"] == 2 and summary["frames_with_a_person_taken"] == 1
    assert summary["person_pixels_called_car"] == pytest.approx((35 + 30) / 240, abs=1e-6)
    assert people_summary(frame.iloc[2:]) is None and people_summary(frame[["image_id"]]) is None


def test_evaluate_reports_people_taken_for_car_in_json_csv_and_report(wild, tmp_path):
    _, validation = split_wild(read_wild(wild))
    street = next(p for p in validation if p.kind == "camvid" and read_mask(p.mask_path).mean() > 0.05)
    web = next(p for p in validation if p.kind == "web")
    # a "person" traced over the frame's own car: the model calls it car, so it counts as taken
    folder = wild_subset(wild, tmp_path / "w", {street.name, web.name},
                         people={street.name: read_mask(street.mask_path)})
    result = CliRunner().invoke(app, ["evaluate", "--data", str(folder), "--cars", "val", "--json",
                                      "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(scores["by_make"]) == {"camvid", "web"} and scores["by_make"]["web"]["images"] == 1
    people = scores["people"]
    assert people["frames_with_people"] == 1 and people["frames_with_a_person_taken"] == 1
    assert people["person_pixels_called_car"] > 0.8 and "10%" in people["rule"]
    per_image = pd.read_csv(tmp_path / "report" / "per_image.csv").set_index("image_id")
    assert per_image.loc[street.name, "people_taken"] >= 1
    assert pd.isna(per_image.loc[web.name, "person_pixels"])  # a product photo has no people mask
    report = (tmp_path / "report" / "index.html").read_text()
    assert "People taken for car" in report and street.name in report
    # and where car is lost, by kind of photo (carmask.apps.car_losses)
    losses = scores["car_losses"]
    assert set(losses["by_make"]) == {"camvid", "web"} and losses["photos"] == 2
    assert (per_image["low_missed"] <= per_image["low_pixels"]).all()
    assert losses["lower_body_missed"] == pytest.approx(
        per_image["low_missed"].sum() / per_image["low_pixels"].sum(), abs=1e-6)
    assert "Where car is lost" in report


# -- people as negatives in training -----------------------------------------------------------
def synthetic_person(height: int = 40, width: int = 16):
    """A person-shaped green ellipse, standing in the middle of a 360-row frame."""
    from carmask.training.data.people import Person

    alpha = np.zeros((height, width), np.float32)
    cv2.ellipse(alpha, (width // 2, height // 2), (width // 2 - 1, height // 2 - 1), 0, 0, 360, 1.0, -1)
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[...] = (0, 255, 0)
    return Person(pixels, alpha, (0.7, 0.5), 360, "synthetic")


@pytest.mark.parametrize("in_front", [True, False])
def test_a_pasted_person_is_not_car_and_stands_by_the_car(in_front):
    from carmask.training.data.people import PeoplePasteConfig, paste_people

    wall = np.zeros((240, 320, 3), np.uint8)
    wall[...] = (255, 0, 255)
    car = np.zeros(wall.shape[:2], bool)
    car[100:160, 80:240] = True  # a car 60 pixels high, its wheels on row 160
    config = PeoplePasteConfig(front=1.0 if in_front else 0.0, colour=0.0)
    picture, mask = paste_people(wall, car, lambda min_height: synthetic_person(), 1,
                                 np.random.default_rng(3), config)
    person = picture[..., 1] > 128  # more green than the magenta wall: over half person
    touched = (np.abs(picture.astype(int) - (255, 0, 255)) > 2).any(axis=2)
    assert person.sum() > 500
    assert not mask[person].any()  # where the picture shows the person, no car
    assert np.array_equal(car & ~mask, car & person)  # and everywhere else the car stays car
    rows, cols = np.nonzero(touched)
    feet, top = rows.max() + 1, rows.min()
    assert 0.9 * 60 <= feet - top <= 2 * 40  # about the car's height, at most twice its own size
    if in_front:  # feet a little nearer the camera than the wheels, across the car's body
        assert 160 <= feet <= 160 + 0.35 * 60 + 2 and 80 <= cols.mean() <= 240
        assert (car & ~mask).sum() > 300  # it hides part of the car
    else:  # by its left or right end, on the car's ground line
        assert abs(feet - 160) <= 3 and not 80 + 20 < cols.mean() < 240 - 20


def test_people_come_only_from_training_street_frames(wild):
    from carmask.training.data.people import PeopleBank, paste_people

    photos = read_wild(wild)
    training, validation = split_wild(photos)
    bank = PeopleBank(photos)  # given every frame, held-out ones included
    held_out_people = {p.name for p in validation if p.people_path is not None}
    assert held_out_people and len(bank) > 100
    assert {d.name for d in bank.donors} <= {p.name for p in training if p.people_path}
    assert not any(is_held_out(d) or d.video in VALIDATION_VIDEOS for d in bank.donors)
    rng = np.random.default_rng(0)
    people = [bank.draw(rng, min_height) for min_height in (0, 0, 0, 40, 80)]
    assert all(p is not None and p.source not in held_out_people for p in people)
    assert all(p.alpha.shape[0] >= 80 for p in people[-1:]) and bank.draw(rng, 10_000) is None
    # in a real training frame, with its own cars: every pixel of a pasted person is not car
    street = next(p for p in training if p.kind == "camvid" and read_mask(p.mask_path).mean() > 0.05)
    frame, cars = read_photo(street.image_path).pixels, read_mask(street.mask_path)
    pasted = 0
    for _ in range(3):  # by a car too close for any person in the bank, none is pasted
        picture, mask = paste_people(frame, cars, lambda min_height: bank.draw(rng, min_height), 2, rng)
        assert not (mask & ~cars).any()
        pasted += int((picture != frame).any(axis=2).sum() > 100)
    assert pasted


def test_the_training_mix_pastes_people_and_the_share_is_checked(wild):
    from carmask.training.data.anywhere import AnywhereDataset, MixConfig

    training, _ = split_wild(read_wild(wild))
    streets = [p for p in training if p.kind == "camvid"][::5]  # enough people, a quick bank
    street = next(p for p in streets if read_mask(p.mask_path).mean() > 0.05)
    always = AnywhereDataset(streets, [], (96, 128), 4, MixConfig(wild=1.0, street_cars=0, people=1.0))
    never = AnywhereDataset(streets, [], (96, 128), 4, MixConfig(wild=1.0, street_cars=0, people=0.0))
    _, own_cars = always._wild_photo(street)
    changed = 0
    for seed in range(3):
        plain, _ = never._real_photo(street, np.random.default_rng(seed))
        with_people, mask = always._real_photo(street, np.random.default_rng(seed))
        assert not (mask & ~own_cars).any()  # people never add car
        changed += int((plain != with_people).any())
    assert changed >= 2
    for share in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="people share must be from 0 to 1"):
            MixConfig(people=share)


def test_train_general_takes_the_people_share_and_the_precision(train_general_cli):
    configs = train_general_cli.configs
    for options in (["--people-share", "0.45", "--precision", "bf16-mixed"], ["--precision", "32"]):
        result = train_general_cli.invoke(*options)
        assert result.exit_code == 0, result.output
    assert (configs[0].mix.people, configs[0].precision) == (0.45, "bf16-mixed")
    assert (configs[1].mix.people, configs[1].precision) == (0.3, "32-true")  # the mix's default
    for bad in ("1.5", "-0.1"):
        result = train_general_cli.invoke("--people-share", bad)
        assert result.exit_code == 2 and "--people-share" in result.output, result.output
    assert "--people-share" in CliRunner().invoke(app, ["train-general", "--help"],
                                                  env={"COLUMNS": "200"}).output
