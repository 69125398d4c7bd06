"""Bad input that used to pass silently (issue 27, class 2): each is read as a viewer shows it,
or refused naming the file and the problem."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from carmask.data.io import read_mask, read_photo
from carmask.kaggle.submission import SubmissionError, read_sample_names


def test_a_16_bit_greyscale_png_reads_as_a_viewer_shows_it(held_out, shipped_predictor, tmp_path):
    from carmask.apps.evaluate import dice_and_iou

    grey = np.asarray(Image.open(held_out[0]).convert("L"), dtype=np.uint16) * 257
    path = tmp_path / "car16.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = read_photo(path).pixels
    assert abs(int(pixels[..., 0].astype(int).mean()) - int((grey // 257).mean())) <= 1  # not white
    mask = shipped_predictor.predict([pixels])[0]
    assert dice_and_iou(mask, read_mask(held_out[1]))[0] > 0.97


def test_a_float_image_reads_by_its_range(tmp_path):
    values = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    pixels = read_photo(tmp_path / "f.tif").pixels
    assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255 and 120 < pixels[24, 32, 0] < 135


def test_a_sample_submission_that_lists_a_name_twice_is_refused(tmp_path):
    sample = tmp_path / "sample.csv"
    sample.write_text("img,rle_mask\na.jpg,1 1\nb.jpg,1 1\na.jpg,1 1\n")
    with pytest.raises(SubmissionError, match="a.jpg is listed twice \\(first on line 2\\)"):
        read_sample_names(sample)


def test_a_background_colours_alpha_is_never_silently_dropped():
    from carmask.apps.cutout import CutoutError, parse_background

    assert parse_background("rgba(0,0,0,0)").transparent
    assert parse_background("#10203000").transparent
    assert parse_background("rgba(10,20,30,255)").color == (10, 20, 30)
    with pytest.raises(CutoutError, match="partly transparent"):
        parse_background("rgba(10,20,30,128)")


def test_a_mask_gif_with_an_inverted_palette_is_read_as_it_looks(held_out, tmp_path):
    truth = read_mask(held_out[1])
    inverted = Image.fromarray((~truth).astype(np.uint8), "P")  # index 1 is the background...
    inverted.putpalette([255, 255, 255, 0, 0, 0])  # ...drawn black; the car (index 0) white
    inverted.save(tmp_path / "inverted_mask.gif")
    assert np.array_equal(read_mask(tmp_path / "inverted_mask.gif"), truth)


def _scan_start(jpeg: bytes) -> int:
    """Where the entropy-coded data of a baseline JPEG starts (after its SOS segment)."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")


def test_a_jpeg_whose_scan_was_replaced_is_refused_and_padding_is_not(carvana, held_out, tmp_path):
    """libjpeg's 'N extraneous bytes before marker 0xd9' means data was left over after the last
    pixel: padding leaves the picture whole, coded data means a spliced scan (Dice 0.59)."""
    from carmask.data.io import PhotoError

    photo = held_out[0].read_bytes()
    own_scan = photo[_scan_start(photo):-2]
    for other in sorted((carvana / "train").glob("*.jpg")):  # another car, its scan shorter
        foreign = other.read_bytes()
        foreign_scan = foreign[_scan_start(foreign):-2]
        if other.name[:12] != held_out[0].name[:12] and len(foreign_scan) < len(own_scan) * 0.95:
            break
    spliced = photo[:_scan_start(photo)] + foreign_scan + own_scan[len(foreign_scan):] + b"\xff\xd9"
    (tmp_path / "spliced.jpg").write_bytes(spliced)
    with pytest.raises(PhotoError, match="spliced.jpg.*left over after the last pixel") as caught:
        read_photo(tmp_path / "spliced.jpg")
    assert caught.value.kind == "corrupt"

    (tmp_path / "padded.jpg").write_bytes(photo[:-2] + b"\x00" * 300 + b"\xff\xd9")
    assert np.array_equal(read_photo(tmp_path / "padded.jpg").pixels, read_photo(held_out[0]).pixels)


def test_a_mask_too_wide_for_a_gif_is_refused_naming_the_limit(tmp_path):
    from carmask.data.io import DataError, save_mask

    wide = np.zeros((2, 70_000), bool)
    with pytest.raises(DataError, match="wide.gif.*at most 65535 pixels a side.*png"):
        save_mask(wide, tmp_path / "wide.gif")
    assert not (tmp_path / "wide.gif").exists()
    save_mask(wide, tmp_path / "wide.png")
    assert read_mask(tmp_path / "wide.png").shape == (2, 70_000)
