"""Cut-outs a dealer can publish (issue 26): soft edges, a shadow on any photo, a canvas, and
one photo to one file."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from carmask.apps.canvas import Canvas, box_of, ground_shadow
from carmask.apps.cutout import CutoutOptions, parse_background, render, soft_alpha
from carmask.cli import app
from carmask.data.io import read_mask, read_photo


@pytest.fixture(scope="module")
def soft_predictor():
    from carmask.inference.route import AutoPredictor
    return AutoPredictor(backend="onnx", soft_edges=True)


def predict(predictor, path):
    decoded = read_photo(path, cover=predictor.decode_cover)
    return read_photo(path).pixels, predictor.predict_decoded(decoded.pixels, decoded.size)


def outline_band(mask: np.ndarray, radius: int = 3) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    m8 = mask.astype(np.uint8)
    return cv2.dilate(m8, kernel) != cv2.erode(m8, kernel)


def test_soft_alpha_keeps_the_mask_and_follows_the_edge_better(soft_predictor, held_out):
    """Alpha > 127 is exactly the mask (so Dice cannot move); along the outline it takes the
    values between, and it is closer than the 0/255 step to the true mask blurred as a camera
    blurs an edge (a Gaussian of 0.7 px: docs/models.md, "Soft edges")."""
    photo, prediction = predict(soft_predictor, held_out[0])
    image = np.asarray(render(photo, prediction, CutoutOptions(), soft_predictor))
    alpha = image[..., 3]
    assert np.array_equal(alpha > 127, prediction.mask)
    band = outline_band(prediction.mask, 2)
    between = (alpha[band] > 0) & (alpha[band] < 255)
    assert between.mean() > 0.3  # anti-aliased, not stair-stepped
    truth = read_mask(held_out[1])
    soft_truth = cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 0.7)
    near = outline_band(truth, 3)
    soft_error = np.abs(alpha[near] / 255 - soft_truth[near]).mean()
    hard_error = np.abs(prediction.mask[near] - soft_truth[near]).mean()
    assert soft_error < 0.95 * hard_error, (soft_error, hard_error)
    hard = np.asarray(render(photo, prediction, CutoutOptions(hard_edges=True), soft_predictor))[..., 3]
    assert set(np.unique(hard)) <= {0, 255}


def test_soft_alpha_is_zero_far_from_the_mask():
    mask = np.zeros((40, 60), bool)
    mask[10:30, 10:30] = True
    probability = np.zeros((40, 60), np.uint8)
    probability[10:30, 10:30] = 255
    probability[5:35, 40:55] = 120  # a region the mask dropped (a speck, another car)
    alpha = soft_alpha(mask, probability)
    assert np.array_equal(alpha > 0.5, mask) and alpha[:, 40:].max() == 0


def outdoor_photo(wild):
    rows = list(csv.DictReader(open(wild / "index.csv")))
    row = next(r for r in rows if r["kind"] == "web" and 0.25 < float(r["car_fraction"]) < 0.6)
    return next((wild / "images").glob(f"{row['name']}.*"))


def test_a_synthetic_shadow_on_an_outdoor_photo_is_grey_and_under_the_car(soft_predictor, wild):
    path = outdoor_photo(wild)
    photo, prediction = predict(soft_predictor, path)
    assert prediction.model == "general"
    options = CutoutOptions(parse_background("white"), shadow=True)
    image = np.asarray(render(photo, prediction, options, soft_predictor)).astype(int)
    car = cv2.dilate(prediction.mask.astype(np.uint8), np.ones((51, 51), np.uint8)) > 0  # + soft edge
    outside = image[~car]
    assert np.abs(outside[:, 0] - outside[:, 1]).max() <= 1  # grey: no road texture, no colour
    assert np.abs(outside[:, 1] - outside[:, 2]).max() <= 1
    grey = np.where(car, 255, image[..., 0])
    darkest_row = np.unravel_index(np.argmin(grey), grey.shape)[0]
    rows = np.flatnonzero(prediction.mask.any(axis=1))
    middle = (rows[0] + rows[-1]) / 2
    assert darkest_row > middle  # under the car, not beside its roof
    assert grey[: max(1, rows[0] - 20)].min() == 255  # nothing above the car


def test_the_ground_shadow_is_fast_on_24_megapixels():
    import time

    mask = np.zeros((4000, 6000), bool)
    cv2.ellipse(mask.view(np.uint8), (3000, 2500), (2200, 700), 0, 0, 360, 1, -1)
    start = time.perf_counter()
    shadow = ground_shadow(mask)
    assert time.perf_counter() - start < 3  # the benchmark holds the 1 s target; this, a bug
    assert shadow[3300, 3000] > shadow[1500, 3000]


def test_every_car_of_a_batch_gets_the_same_margins_on_the_canvas(auto_predictor, held_out, wild, tmp_path):
    inputs = [held_out[0], outdoor_photo(wild)]
    out = tmp_path / "canvas"
    result = CliRunner().invoke(app, ["cutout", *map(str, inputs), "--out", str(out), "--canvas",
                                      "800x600", "--margin", "0.1"])
    assert result.exit_code == 0, result.output
    for path in inputs:
        alpha = np.asarray(Image.open(out / f"{path.stem}.png"))[..., 3]
        assert alpha.shape == (600, 800)
        x0, y0, x1, y1 = box_of(alpha > 127)
        # the car fills the free area one way and is centred the other: a margin of 80 px
        # left and right, or 60 px top and bottom, within a pixel or two of the soft edge
        fits_width = abs(x0 - 80) <= 2 and abs(800 - x1 - 80) <= 2
        fits_height = abs(y0 - 60) <= 2 and abs(600 - y1 - 60) <= 2
        assert fits_width or fits_height, (path.name, x0, y0, x1, y1)
        assert abs((x0 + x1) / 2 - 400) <= 2 and abs((y0 + y1) / 2 - 300) <= 2


def test_a_car_enlarged_past_twice_its_size_on_the_canvas_is_listed_to_check(held_out, wild, tmp_path):
    """A small web photo blown up onto a listing canvas looks soft: the cut-out is written, and
    the manifest and the summary say so; a Carvana photo on the same canvas is shrunk, silently."""
    import json

    small, large = outdoor_photo(wild), held_out[0]
    out = tmp_path / "listing"
    result = CliRunner().invoke(app, ["cutout", str(small), str(large), "--out", str(out),
                                      "--background", "white", "--canvas", "1600x1200"])
    assert result.exit_code == 0, result.output
    entries = {Path(e["input"]).name: e for e in map(json.loads, (out / "manifest.jsonl").open())}
    enlarged = [w for w in entries[small.name]["warnings"] if "enlarged" in w]
    assert len(enlarged) == 1 and "1600x1200 canvas" in enlarged[0], entries[small.name]
    scale = float(enlarged[0].split("enlarged ")[1].split("x")[0])
    assert 2 < scale < 1440 / 100  # the car is over 100 pixels wide in the 480 of the photo
    assert entries[large.name]["warnings"] == [] and entries[small.name]["status"] == "written"
    assert f"{small}: the car is enlarged" in " ".join(result.output.split())


def test_canvas_bottom_alignment_and_bad_canvases():
    canvas = Canvas.parse("1600x1200", margin=0.05, align="bottom")
    scale, left, top = canvas.placement((0, 0, 400, 100))
    assert scale == pytest.approx(1440 / 400) and top + 100 * scale == pytest.approx(1140, abs=1)
    for text in ("1600", "axb", "8x8"):
        with pytest.raises(ValueError):
            Canvas.parse(text)
    with pytest.raises(ValueError):
        Canvas((800, 600), margin=0.5)


def test_one_photo_to_one_file_and_nothing_to_do_loads_no_model(held_out, tmp_path, monkeypatch):
    out = tmp_path / "single.png"
    result = CliRunner().invoke(app, ["cutout", str(held_out[0]), "--out", str(out)])
    assert result.exit_code == 0 and out.is_file() and not out.is_dir(), result.output
    assert Image.open(out).size == (1918, 1280)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded with nothing to do")
    monkeypatch.setattr("carmask.inference.route.create_predictor", no_model)
    again = CliRunner().invoke(app, ["cutout", str(held_out[0]), "--out", str(out)])
    assert again.exit_code == 0 and "already there" in again.output
    clash = CliRunner().invoke(app, ["cutout", str(held_out[0]), "--out", str(tmp_path / "x.png"),
                                     "--format", "jpg"])
    assert clash.exit_code == 2 and "disagree" in clash.output  # a usage mistake


def test_a_batch_mirrors_the_tree_records_a_manifest_and_resumes(held_out, tmp_path):
    import json
    import shutil

    photos = tmp_path / "stock"
    for stock in ("stock123", "stock456"):
        (photos / stock).mkdir(parents=True)
        shutil.copy(held_out[0], photos / stock / "1.jpg")  # the usual layout: 1.jpg in each
    (photos / "stock456" / "2.jpg").write_bytes(b"not a photo")
    out = tmp_path / "out"
    first = CliRunner().invoke(app, ["cutout", str(photos), "--out", str(out)])
    assert first.exit_code == 3, first.output  # one photo could not be used
    assert (out / "stock123" / "1.png").is_file() and (out / "stock456" / "1.png").is_file()
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(entry["status"] for entry in lines) == ["failed", "written", "written"]
    written = next(entry for entry in lines if entry["status"] == "written")
    assert written["model"] == "studio" and (written["width"], written["height"]) == (1918, 1280)
    assert written["seconds"] > 0 and written["warnings"] == []
    assert "2.jpg" in next(entry for entry in lines if entry["status"] == "failed")["error"]

    (out / "stock123" / "1.png").unlink()  # resume: redo only what the manifest lacks
    again = CliRunner().invoke(app, ["cutout", str(photos), "--out", str(out), "--resume"])
    assert (out / "stock123" / "1.png").is_file()
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 5, again.output  # stock123/1 again, and the bad photo, once more each


def test_standard_input_to_standard_output(held_out, tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "carmask", "cutout", "-", "--out", "-",
                             "--background", "white", "--format", "jpg"],
                            input=held_out[0].read_bytes(), capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout[:2] == b"\xff\xd8" and Image.open(io.BytesIO(result.stdout)).size == (1918, 1280)
    bad = subprocess.run([sys.executable, "-m", "carmask", "cutout", "-", "--out", "-"],
                         input=b"hello", capture_output=True, timeout=300)
    assert bad.returncode == 3 and b"standard input" in bad.stderr and not bad.stdout


@pytest.mark.parametrize("suffix", [".avif", ".heic"])
def test_avif_and_heic_photos_are_cut_out(suffix, auto_predictor, held_out, tmp_path):
    if suffix == ".heic":
        pytest.importorskip("pillow_heif", reason="HEIC needs carmask[heic] (pillow-heif)")
    from carmask.apps.evaluate import dice_and_iou

    photo = tmp_path / f"car{suffix}"
    Image.open(held_out[0]).save(photo, quality=90)
    result = CliRunner().invoke(app, ["cutout", str(photo), "--out", str(tmp_path / "car.png")])
    assert result.exit_code == 0, result.output
    alpha = np.asarray(Image.open(tmp_path / "car.png"))[..., 3] > 127
    assert dice_and_iou(alpha, read_mask(held_out[1]))[0] > 0.99


def test_soft_alpha_is_opaque_inside_the_car_away_from_its_outline():
    mask = np.zeros((60, 80), bool)
    mask[10:50, 10:70] = True
    probability = np.full((60, 80), 200, np.uint8)  # unsure everywhere, as over a window
    alpha = soft_alpha(mask, probability)
    assert alpha[30, 40] == 1.0 and alpha[10, 40] == pytest.approx(200 / 255)


def test_a_second_batch_into_the_same_folder_is_refused_while_the_first_runs(held_out, tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from carmask.util.output_files import output_lock\n"
                               f"with output_lock({str(out)!r}):\n"
                               "    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(app, ["cutout", str(held_out[0]), "--out", str(out)])
        assert result.exit_code == 1 and "another carmask process" in result.output, result.output
        assert not list(out.glob("*.png"))
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    again = CliRunner().invoke(app, ["cutout", str(held_out[0]), "--out", str(out)])
    assert again.exit_code == 0 and (out / f"{held_out[0].stem}.png").is_file(), again.output
