"""Photos of other shapes than the model's input: a portrait photo is padded at its sides rather
than stretched across the input, on every path (onnxruntime, torch, the fast path), and its
mask, confidence and second look are about the photo alone."""

from __future__ import annotations

import numpy as np
import pytest

from carmask.data.io import read_mask, read_photo
from carmask.inference import outputs
from carmask.inference.outputs import fit_to_input, photo_columns
from carmask.inference.predictor import Predictor

# a front view of a held-out car (the shipped studio model's validation cars): narrow enough for
# a 3:4 portrait crop around it
FRONT = "0495dcf27283_01"


def test_only_photos_much_narrower_than_the_input_are_padded():
    assert photo_columns((1280, 1918), (640, 960)) == slice(0, 960)  # Carvana
    assert photo_columns((360, 480), (448, 608)) == slice(0, 608)  # the outdoor photos
    assert photo_columns((1000, 1000), (640, 960)) == slice(0, 960)  # square: 1.5x, stretched
    assert photo_columns((720, 1920), (640, 960)) == slice(0, 960)  # wider: stretched
    assert photo_columns((1280, 960), (640, 960)) == slice(240, 720)  # 3:4 portrait
    band = photo_columns((1919, 1079), (448, 608))  # 9:16 portrait, odd sizes
    assert band.stop - band.start == pytest.approx(448 * 1079 / 1919, abs=1)
    assert band.start == 608 - band.stop  # centred, so a flip keeps it in place


def test_a_portrait_input_holds_the_photo_between_sides_of_its_median_colour():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (800, 400, 3), dtype=np.uint8)
    photo[:, :, 0] = 7
    fitted = fit_to_input(photo, (64, 96))
    band = photo_columns((800, 400), (64, 96))
    assert fitted.shape == (64, 96, 3) and band == slice(32, 64)
    assert (fitted[:, :band.start, 0] == 7).all() and (fitted[:, band.stop:, 0] == 7).all()
    sides = np.concatenate([fitted[:, :band.start], fitted[:, band.stop:]], axis=1).reshape(-1, 3)
    assert (sides == sides[0]).all()
    # a photo decoded reduced gets the band of its full size
    assert np.array_equal(fit_to_input(photo[::2, ::2], (64, 96), photo_size=(800, 400))[:, band],
                          fit_to_input(photo[::2, ::2], (64, 96))[:, band])


def _portrait(carvana):
    """A 3:4 crop of a held-out front view around its car: (photo, true mask, the columns)."""
    photo = read_photo(carvana / "train" / f"{FRONT}.jpg").pixels
    truth = read_mask(carvana / "train_masks" / f"{FRONT}_mask.gif") > 0
    height, width = truth.shape
    crop = height * 3 // 4
    columns = np.flatnonzero(truth.any(axis=0))
    left = min(max(0, (columns[0] + columns[-1]) // 2 - crop // 2), width - crop)
    assert truth[:, left:left + crop].sum() == truth.sum(), "the car must fit the crop"
    return np.ascontiguousarray(photo[:, left:left + crop]), truth[:, left:left + crop], slice(left, left + crop)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_a_portrait_photo_is_masked_as_well_as_the_whole_photo(carvana, shipped_predictor, monkeypatch):
    """Stretched 2x across the 3:2 input, the studio model loses about 0.01 Dice on such crops
    (0.987 against 0.996 on 18 held-out ones); padded, it masks the crop as it masks the photo."""
    photo, truth, columns = _portrait(carvana)
    whole = shipped_predictor.predict([read_photo(carvana / "train" / f"{FRONT}.jpg").pixels])[0][:, columns]
    padded = shipped_predictor.predict_detailed([photo])[0]
    monkeypatch.setattr(outputs, "PAD_NARROWER_THAN", float("inf"))
    stretched = shipped_predictor.predict([photo])[0]
    assert padded.mask.shape == truth.shape
    assert _dice(padded.mask, truth) > _dice(whole, truth) - 0.002
    assert _dice(padded.mask, truth) > _dice(stretched, truth) + 0.002
    # the confidence is about the photo, not the padding
    assert padded.confidence.car_share == pytest.approx(truth.mean(), abs=0.01)


def test_torch_and_onnx_pad_a_portrait_photo_alike(carvana, shipped_predictor):
    photo, _, _ = _portrait(carvana)
    onnx = shipped_predictor.predict_detailed([photo])[0]
    torch_ = Predictor(backend="torch").predict_detailed([photo])[0]
    assert _dice(onnx.mask, torch_.mask) > 0.999
    assert onnx.confidence.car_share == pytest.approx(torch_.confidence.car_share, abs=0.002)
