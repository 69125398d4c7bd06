"""The one-call API (issue 25): carmask.remove / carmask.mask on every kind of input."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import carmask


@pytest.fixture(scope="module")
def session():
    return carmask.load()


@pytest.fixture(scope="module")
def photo_path(held_out):
    return held_out[0]


@pytest.fixture(scope="module")
def cli_mask(photo_path, tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("cli")
    subprocess.run([sys.executable, "-m", "carmask", "predict", str(photo_path), "--masks-dir", str(out)],
                   check=True, capture_output=True, timeout=300)
    return np.asarray(Image.open(out / f"{photo_path.stem}_mask.png")) > 127


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_a_path_gives_exactly_the_command_lines_mask(session, photo_path, cli_mask, held_out):
    from carmask.data.io import read_mask

    mask = session.mask(photo_path)
    assert isinstance(mask, Image.Image) and mask.mode == "L" and mask.size == (1918, 1280)
    assert np.array_equal(np.asarray(mask) > 127, cli_mask)
    assert dice(cli_mask, read_mask(held_out[1])) > 0.99  # and it is the car
    from_bytes = session.mask(photo_path.read_bytes())
    assert isinstance(from_bytes, bytes)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(from_bytes))) > 127, cli_mask)


def test_every_input_kind_gives_the_same_car_back_as_its_own_kind(session, photo_path, cli_mask):
    pil = Image.open(photo_path)
    rgb = np.asarray(pil.convert("RGB"))
    kinds = {
        "PIL": pil,
        "uint8 RGB": rgb,
        "float 0..1": rgb.astype(np.float32) / 255,
        "RGBA": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
        "greyscale (H, W)": np.asarray(pil.convert("L")),
        "greyscale (H, W, 1)": np.asarray(pil.convert("L"))[..., None],
        "16-bit": (rgb.astype(np.uint16) * 257),
    }
    for kind, image in kinds.items():
        mask = session.mask(image)
        mask = np.asarray(mask) > 127 if isinstance(mask, Image.Image) else mask
        assert mask.shape == cli_mask.shape, kind
        # full-size decoding against the command line's reduced one, and grey photos: close
        assert dice(mask, cli_mask) > (0.98 if "grey" in kind else 0.995), kind
    cut = session.remove(rgb)
    assert isinstance(cut, np.ndarray) and cut.shape == (*rgb.shape[:2], 4)
    assert np.array_equal(cut[..., 3] > 127, session.mask(rgb))
    white = session.remove(pil, background="white")
    assert isinstance(white, Image.Image) and white.mode == "RGB"
    assert isinstance(session.remove(photo_path.read_bytes(), background=(0, 0, 0)), bytes)


def test_module_level_calls_share_one_loaded_session(photo_path):
    small = np.asarray(Image.open(photo_path).convert("RGB").resize((480, 320)))
    first = carmask.mask(small)
    assert first.dtype == bool and first.shape == (320, 480) and first.mean() > 0.1
    loaded = carmask.api._sessions["auto", "fast"]
    carmask.remove(small, largest=True, feather=2)
    assert carmask.api._sessions["auto", "fast"] is loaded and len(carmask.api._sessions) == 1


@pytest.mark.parametrize("bad, words", [
    (np.zeros((10, 10, 5), np.uint8), "expected an (H, W)"),
    (np.zeros((4,), np.uint8), "expected an (H, W)"),
    (np.full((20, 30, 3), 2.0), "expected 0..1"),
    (np.full((20, 30, 3), np.nan), "NaN"),
    (np.zeros((20, 30, 3), np.int64), "dtype int64"),
    (b"not a photo at all", "image"),
    ("/no/such/car.jpg", "car.jpg"),
    (12345, "path, bytes, a PIL image or a numpy array"),
])
def test_wrong_input_is_a_value_error_that_says_what_was_expected(session, bad, words):
    with pytest.raises(ValueError, match=None) as caught:
        session.mask(bad)
    assert words in str(caught.value)
    assert "cv2" not in str(caught.value) and "OpenCV" not in str(caught.value)


def test_bad_background_is_a_value_error(session):
    with pytest.raises(ValueError, match="background"):
        session.remove(np.zeros((64, 96, 3), np.uint8), background="not-a-colour")


@pytest.mark.parametrize("options, words", [
    ({"align": "bottom"}, "canvas"),  # margin and align mean something on a canvas only
    ({"margin": 0.1}, "canvas"),
    ({"hard_edges": True, "feather": 3}, "feather"),  # a feathered edge is soft
])
def test_options_that_need_or_contradict_another_are_a_value_error(session, options, words):
    with pytest.raises(ValueError, match=words):
        session.remove(np.zeros((64, 96, 3), np.uint8), **options)


def test_a_cut_out_enlarged_on_its_canvas_says_so(session, photo_path):
    """The Carvana photo's car, over 1,500 pixels wide, shrinks onto a 1600x1200 canvas; the same
    photo at a quarter of its size is drawn over twice its pixels, and the result says so."""
    photo = np.asarray(Image.open(photo_path).convert("RGB"))
    assert session.cutout(photo, canvas="1600x1200").warnings == []
    quarter = np.ascontiguousarray(photo[::4, ::4])
    warnings = session.cutout(quarter, canvas="1600x1200").warnings
    assert len(warnings) == 1 and "enlarged" in warnings[0] and "smaller canvas" in warnings[0]
