from itertools import islice

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from carmask.kaggle import rle
from carmask.training import device_rle
from carmask.data.io import read_mask
from carmask.util.parallel import imap_bounded

# Prefixes of Kaggle's train_masks.csv printed by public notebooks (SOURCES.md).
KAGGLE_PREFIXES = {
    "00087a6bd4dc_01": "879386 40 881253 141 883140 205 885009 17",
    "00087a6bd4dc_02": "873779 4 875695 7 877612 9 879528 12 881267 15",
    "00087a6bd4dc_03": "864300 9 866217 13 868134 15 870051 16",
    "00087a6bd4dc_04": "879735 20 881650 26 883315 92 883564 30",
    "00087a6bd4dc_05": "883365 74 883638 28 885262 119 885550 34",
}


@pytest.mark.parametrize("image_id", sorted(KAGGLE_PREFIXES))
def test_encoding_matches_kaggle_train_masks_csv(carvana, image_id):
    encoding = rle.encode(read_mask(carvana / "train_masks" / f"{image_id}_mask.gif"))
    # Notebooks cut the printout mid-number (e.g. "881267 15..." of "881267 151"), so compare
    # characters, not whole tokens.
    assert encoding.startswith(KAGGLE_PREFIXES[image_id])


def test_encoding_is_row_major_not_column_major(carvana):
    mask = read_mask(carvana / "train_masks" / "00087a6bd4dc_01_mask.gif")
    assert not rle.encode(mask).startswith("740711 ")
    assert rle.encode(np.ascontiguousarray(mask.T)).startswith("740711 50 ")  # column-major


def test_every_real_mask_round_trips_and_the_device_runs_agree(carvana):
    """Every real mask encodes to a valid RLE that decodes back to it, and the GPU path's run
    finder, run here on the CPU, writes the same string. One pass: reading the masks is most of
    the time."""
    paths = sorted((carvana / "train_masks").glob("*_mask.gif"))
    assert len(paths) == len(list((carvana / "train").glob("*.jpg"))) > 0  # one mask per photo
    named = zip((p.name for p in paths), imap_bounded(read_mask, paths))
    while chunk := list(islice(named, 8)):  # a few masks a batch, as a GPU would get them
        names, masks = zip(*chunk)
        encodings = list(map(rle.encode, masks))
        for name, mask, encoding in zip(names, masks, encodings):
            assert np.array_equal(rle.decode(encoding, mask.shape), mask), name
            assert rle.validate(encoding) is None, name
        assert _device_encodings(masks) == encodings, names


def test_examples_from_the_competition_rules():
    mask = rle.decode("1 3 10 5", (2, 10))
    assert np.flatnonzero(mask.ravel()).tolist() == [0, 1, 2, 9, 10, 11, 12, 13]


masks = arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40)))


@settings(max_examples=300, deadline=None)
@given(masks)
def test_round_trip_property(mask):
    encoding = rle.encode(mask)
    assert np.array_equal(rle.decode(encoding, mask.shape), mask)
    pairs = rle.parse(encoding, mask.shape)
    assert pairs[:, 1].sum() == mask.sum()
    # Runs never touch: a gap of at least one pixel separates them.
    assert (pairs[1:, 0] > pairs[:-1].sum(axis=1)).all()


@settings(max_examples=100, deadline=None)
@given(masks)
def test_encode_accepts_uint8_and_0_255(mask):
    assert rle.encode(mask.astype(np.uint8) * 255) == rle.encode(mask)


def test_empty_and_full_masks():
    shape = (1280, 1918)
    assert rle.encode(np.zeros(shape, bool)) == ""
    assert not rle.decode("", shape).any()
    assert rle.encode(np.ones(shape, bool)) == f"1 {1280 * 1918}"
    assert rle.decode(f"1 {1280 * 1918}", shape).all()


@pytest.mark.parametrize("row, col", [(0, 0), (0, 1917), (1279, 0), (1279, 1917)])
def test_single_pixel_at_each_corner(row, col):
    mask = np.zeros((1280, 1918), bool)
    mask[row, col] = True
    assert rle.encode(mask) == f"{row * 1918 + col + 1} 1"
    assert np.array_equal(rle.decode(rle.encode(mask)), mask)


@pytest.mark.parametrize("encoding, problem", [
    ("1 2 3", "odd number of tokens"),
    ("1 2.5", "not a non-negative integer"),
    ("a b", "not a non-negative integer"),
    ("5 0", "length 0 must be >= 1"),
    ("5 -3", "negative"),
    ("0 3", "start 0 must be >= 1"),
    ("10 2 5 2", "unsorted"),
    ("10 5 12 2", "overlapping"),
    (f"{1280 * 1918} 2", "past the 1280x1918 image"),
    ("1  2", "single spaces"),
    (" 1 2", "single spaces"),
    ("1 2\n", "single spaces"),
    ("99999999999999999999 1", "too large: the 1280x1918 image has 2455040 pixels"),  # > int64
    ("1 2 5 " + "9" * 40, "too large"),
])
def test_parse_rejects_invalid_rle_with_a_named_problem(encoding, problem):
    with pytest.raises(rle.RLEError, match=problem):
        rle.parse(encoding)
    assert problem in rle.validate(encoding)


def test_numbers_too_large_for_64_bits_are_named():
    assert rle.validate("1 2 5 " + "9" * 40).startswith("token 4 (99999999999999999999...) is")
    assert rle.validate("7 99999999999999999999").startswith("token 2 (99999999999999999999) is")


def test_leading_zeros_do_not_make_a_number_too_large():
    assert rle.decode("0" * 30 + "2 3", (1, 5)).tolist() == [[False, True, True, True, False]]


def test_decode_refuses_a_shape_over_the_pixel_limit():
    with pytest.raises(ValueError, match="11000x10000 is 110,000,000 pixels, more than the limit"):
        rle.decode("1 1", (11000, 10000))  # 110 MB: a typo like 100000x100000 would be 10 GB
    assert rle.decode("1 1", (10000, 10000)).sum() == 1  # exactly at the limit is fine


def test_touching_runs_are_valid_though_encode_never_writes_them():
    assert rle.decode("10 5 15 2", (1, 20)).sum() == 7


def test_runs_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2), bool))


def test_encode_reads_the_mask_from_the_alpha_channel_of_a_cutout(carvana, tmp_path):
    """An RGBA PNG whose mask is its alpha (a cut-out) was read by its colours: all car."""
    from PIL import Image
    from typer.testing import CliRunner

    from carmask.cli import app
    truth = read_mask(carvana / "train_masks" / "00087a6bd4dc_01_mask.gif")
    rgba = np.full(truth.shape + (4,), 255, np.uint8)
    rgba[..., 3] = truth * 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    rgba[..., :3], rgba[..., 3] = (truth * 255)[..., None], 255  # opaque: the colours are the mask
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    for name in ("cutout.png", "opaque.png"):
        assert np.array_equal(read_mask(tmp_path / name), truth), name
        result = CliRunner().invoke(app, ["rle", "encode", str(tmp_path / name)])
        assert result.exit_code == 0 and result.output.strip() == rle.encode(truth), name


def _device_encodings(masks) -> list[str]:
    import torch
    return [device_rle.encode_runs(starts, lengths)
            for starts, lengths in device_rle.device_runs(torch.from_numpy(np.stack(masks)))]


@pytest.mark.parametrize("shape", [(1280, 1918), (1, 1), (3, 1), (1, 5)])
def test_device_runs_on_empty_and_full_masks(shape):
    assert _device_encodings([np.zeros(shape, bool)]) == [""]
    assert _device_encodings([np.ones(shape, bool)]) == [f"1 {shape[0] * shape[1]}"]


def test_device_runs_single_pixels_and_runs_at_the_ends():
    shape = (1280, 1918)
    masks = []
    for row, col in [(0, 0), (0, 1917), (1279, 0), (1279, 1917), (640, 959)]:
        mask = np.zeros(shape, bool)
        mask[row, col] = True
        masks.append(mask)
    wrap = np.zeros(shape, bool)
    wrap[0, -3:], wrap[1, :2], wrap[-1, -10:] = True, True, True  # a run across a row end; the last
    masks.append(wrap)
    expected = list(map(rle.encode, masks))
    assert expected[-1] == f"1916 5 {1280 * 1918 - 9} 10"
    assert _device_encodings(masks) == expected  # one batch: runs must not leak between masks


@settings(max_examples=200, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12))))
def test_device_runs_property(batch):
    assert _device_encodings(list(batch)) == [rle.encode(mask) for mask in batch]


def test_device_runs_accepts_uint8_and_keeps_runs_small():
    import torch
    mask = np.zeros((4, 6), np.uint8)
    mask[1, 2:5] = 255
    (starts, lengths), = device_rle.device_runs(torch.from_numpy(mask)[None])
    assert starts.dtype == lengths.dtype == torch.int32
    assert device_rle.encode_runs(starts, lengths) == rle.encode(mask) == "9 3"
    with pytest.raises(ValueError, match="3-D"):
        device_rle.device_runs(torch.from_numpy(mask))


def test_an_rle_that_starts_with_a_dash_is_read_as_an_rle_not_an_option(tmp_path):
    from typer.testing import CliRunner

    from carmask.cli import app

    result = CliRunner().invoke(app, ["rle", "decode", "-1 2", "--out", str(tmp_path / "m.png")])
    assert result.exit_code == 1 and "invalid RLE" in result.stderr and "-1" in result.stderr
    assert "No such option" not in result.output and not (tmp_path / "m.png").exists()
