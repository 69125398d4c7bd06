"""Any name a file system allows (issue 27): a photo's name reaches every output intact, or is
refused before any work with a reason; never a lost row."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from carmask.kaggle import rle
from carmask.kaggle.submission import name_problem

NAMES = st.builds(
    lambda dash, text: f"{dash}{text}.jpg",
    st.sampled_from(["", "-", "--"]),
    st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
            min_size=1, max_size=24).filter(lambda t: len(t.encode()) < 200),
) | st.sampled_from(["voiture_été.jpg", "a, b.jpg", 'say "cheese".jpg', "new\nline.jpg",
                     "tab\there.jpg", "日本の車.jpg", "--help.jpg", " spaced .jpg"])


@pytest.fixture(scope="module")
def small_photo(held_out) -> bytes:
    buffer = io.BytesIO()
    Image.open(held_out[0]).convert("RGB").resize((240, 160)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES)
def test_a_photo_name_reaches_every_output_or_is_refused_up_front(name, small_photo, shipped_predictor,
                                                                  tmp_path_factory):
    from carmask.inference.job import run_prediction

    folder = tmp_path_factory.mktemp("names")
    photo = folder / name
    photo.write_bytes(small_photo)
    submission, masks = folder / "out" / "submission.csv", folder / "out" / "masks"
    if name_problem(name):
        with pytest.raises(ValueError, match="cannot be a submission row"):
            run_prediction(shipped_predictor, {name: photo}, [name], submission=submission,
                           masks_dir=masks)
        assert not submission.exists() and not masks.exists()  # refused before any work
        return
    summary = run_prediction(shipped_predictor, {name: photo}, [name], submission=submission,
                             masks_dir=masks)
    assert summary.predicted == 1 and not summary.failures
    rows = list(csv.reader(io.StringIO(submission.read_text(encoding="utf-8"), newline="")))
    assert rows[0] == ["img", "rle_mask"] and rows[1][0] == name and len(rows) == 2
    mask = np.asarray(Image.open(masks / (photo.stem + "_mask.png"))) > 127
    assert mask.any() and np.array_equal(rle.decode(rows[1][1], mask.shape), mask)


def test_the_cutout_manifest_keeps_any_name(held_out, small_photo, tmp_path):
    from typer.testing import CliRunner

    from carmask.cli import app

    folder = tmp_path / "photos"
    folder.mkdir()
    names = ["voiture_été.jpg", 'a, "b".jpg', "new\nline.jpg", "-dash.jpg"]
    for name in names:
        (folder / name).write_bytes(small_photo)
    result = CliRunner().invoke(app, ["cutout", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(entry["input"].rsplit("/", 1)[1] for entry in lines) == sorted(names)
    assert all((tmp_path / "out" / entry["output"].rsplit("/", 1)[1]).is_file() for entry in lines)
