"""Cut-outs: backgrounds, soft edges, the kept shadow, composites, and the batch job and CLI on
real Carvana photos with the shipped model."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from carmask.apps.batch import cutout_files, expand_inputs
from carmask.cli import app
from carmask.apps.cutout import (
    TRANSPARENT,
    Background,
    CutoutError,
    composite,
    cover,
    encode_image,
    feathered_alpha,
    floor_shadow,
    parse_background,
)
from carmask.data.io import read_image, read_mask
from carmask.apps.evaluate import dice_and_iou


def disc(size=(60, 80), radius=20) -> np.ndarray:
    yy, xx = np.mgrid[:size[0], :size[1]]
    return (yy - size[0] // 2) ** 2 + (xx - size[1] // 2) ** 2 < radius ** 2


# -- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, color", [("white", (255, 255, 255)), ("#1a2B3c", (26, 43, 60)),
                                         ("#abc", (170, 187, 204)), ("darkgreen", (0, 100, 0))])
def test_colours_parse(spec, color):
    background = parse_background(spec)
    assert background.kind == "color" and background.color == color


def test_transparent_and_image_backgrounds_parse(tmp_path):
    assert parse_background("transparent").transparent
    path = tmp_path / "sky.png"
    Image.new("RGB", (30, 20), (10, 20, 30)).save(path)
    background = parse_background(str(path))
    assert background.kind == "image" and background.image.shape == (20, 30, 3)


def test_a_bad_background_names_itself(tmp_path):
    with pytest.raises(CutoutError, match="'#12345' is not 'transparent', a colour"):
        parse_background("#12345")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(CutoutError, match="notes.png"):
        parse_background(str(tmp_path / "notes.png"))
    with pytest.raises(CutoutError):  # the service never reads files named by a client
        parse_background(str(tmp_path / "notes.png"), allow_files=False)


@pytest.mark.parametrize("spec", ["rgb(300,0,0)", "rgb(0,256,0)", "rgb(0,0,999)"])
def test_colour_components_out_of_range_are_refused(spec):
    # Pillow parses these, and the 8-bit picture would wrap 300 round to 44
    with pytest.raises(CutoutError, match=r"colour components must be 0\.\.255"):
        parse_background(spec)
    assert parse_background("rgb(255,0,0)").color == (255, 0, 0)


@pytest.mark.parametrize("shape", [(10, 100, 3), (100, 10, 3), (37, 53, 3)])
def test_cover_fills_exactly_and_keeps_the_centre(shape):
    image = np.zeros(shape, np.uint8)
    image[shape[0] // 2 - 1:shape[0] // 2 + 1, shape[1] // 2 - 1:shape[1] // 2 + 1] = 255
    out = cover(image, (40, 60))
    assert out.shape == (40, 60, 3)
    assert out[20, 30].max() > 0  # the centre stays in the middle


# -- alpha and shadow ----------------------------------------------------------------------------
def test_feather_zero_is_the_mask():
    mask = disc()
    assert np.array_equal(feathered_alpha(mask, 0), mask.astype(np.float32))


def test_feather_ramps_inside_the_outline_only():
    mask = disc(radius=25)
    alpha = feathered_alpha(mask, 6)
    assert np.all(alpha[~mask] == 0)  # no halo of backdrop outside the car
    assert alpha[30, 40] == 1.0  # deep inside
    soft = (alpha > 0) & (alpha < 1)
    assert soft.any()
    edge_distance = np.hypot(*np.nonzero(soft)[::-1] - np.array([[40], [30]])).min()
    assert edge_distance >= 25 - 6 - 1  # the ramp is within `feather` px of the edge


def test_the_kept_shadow_is_under_the_car(carvana, held_out):
    photo, truth = read_image(held_out[0]), read_mask(held_out[1])
    shadow = floor_shadow(photo, truth)
    rows = np.flatnonzero(truth.any(axis=1))
    below = shadow[rows[-1] - 20:rows[-1] + 20][~truth[rows[-1] - 20:rows[-1] + 20]]
    assert below.max() > 0.2  # a visible shadow around the wheels
    assert shadow[:rows[0]].max() == 0  # nothing above the car
    assert 0 <= shadow.min() and shadow.max() <= 1


# -- composites ----------------------------------------------------------------------------------
def test_transparent_cutout_is_rgba_with_the_mask_as_alpha():
    photo = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mask = disc()
    image = composite(photo, mask, TRANSPARENT)
    pixels = np.asarray(image)
    assert image.mode == "RGBA" and pixels.shape == (60, 80, 4)
    assert np.array_equal(pixels[..., 3] == 255, mask) and np.all(pixels[..., 3][~mask] == 0)
    assert np.array_equal(pixels[..., :3][mask], photo[mask])


def test_colour_and_image_composites_replace_only_the_backdrop():
    photo = np.full((60, 80, 3), 200, np.uint8)
    mask = disc()
    white = np.asarray(composite(photo, mask, parse_background("#102030")))
    assert np.all(white[~mask] == (16, 32, 48)) and np.all(white[mask] == 200)
    backdrop = np.zeros((30, 40, 3), np.uint8)
    backdrop[..., 2] = 255
    blue = np.asarray(composite(photo, mask, Background.from_image(backdrop)))
    assert blue.shape == (60, 80, 3) and np.all(blue[~mask] == (0, 0, 255))


def test_transparent_cutout_over_a_colour_is_the_colour_composite(carvana, held_out):
    photo, truth = read_image(held_out[0]), read_mask(held_out[1])
    options = {"feather": 4, "shadow": True}
    layered = Image.new("RGBA", (1918, 1280), (30, 60, 90, 255))
    layered.alpha_composite(composite(photo, truth, TRANSPARENT, **options))
    direct = composite(photo, truth, parse_background("#1e3c5a"), **options)
    difference = np.abs(np.asarray(layered.convert("RGB"), np.int16) - np.asarray(direct, np.int16))
    assert difference.max() <= 2  # rounding only: the page and the service agree


def test_jpg_cannot_hold_a_transparent_cutout():
    image = composite(np.zeros((60, 80, 3), np.uint8), disc())
    with pytest.raises(CutoutError, match="no alpha channel"):
        encode_image(image, "jpg")
    webp = Image.open(io.BytesIO(encode_image(image, "webp")))
    assert webp.mode == "RGBA" and np.array_equal(np.asarray(webp)[..., 3] > 127, disc())


# -- the batch job on real photos ----------------------------------------------------------------
@pytest.fixture
def photos(carvana, held_out, tmp_path):
    """The held-out photo, a smaller PNG copy of it under another name, and a truncated JPEG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / held_out[0].name).symlink_to(held_out[0])
    Image.open(held_out[0]).resize((640, 427)).save(folder / "small.png")
    data = held_out[0].read_bytes()
    (folder / "cut_short.jpg").write_bytes(data[: len(data) // 3])
    return folder


def test_cutout_files_on_real_photos(shipped_predictor, photos, held_out, tmp_path):
    out = tmp_path / "out"
    summary = cutout_files(shipped_predictor, expand_inputs([photos]), out)
    assert sorted(p.name for p in summary.written) == ["0495dcf27283_06.png", "small.png"]
    assert [p.name for p, _ in summary.failed] == ["cut_short.jpg"]
    assert "truncated" in summary.failed[0][1]
    truth = read_mask(held_out[1])
    full = Image.open(out / "0495dcf27283_06.png")
    assert full.mode == "RGBA" and full.size == (1918, 1280)
    assert dice_and_iou(np.asarray(full)[..., 3] > 127, truth)[0] >= 0.98
    small = Image.open(out / "small.png")  # any photo size: the mask is fitted to the photo
    small_truth = np.asarray(Image.fromarray(truth).resize((640, 427))) > 0
    assert small.size == (640, 427)
    assert dice_and_iou(np.asarray(small)[..., 3] > 127, small_truth)[0] >= 0.97

    again = cutout_files(shipped_predictor, expand_inputs([photos]), out)
    assert not again.written and len(again.skipped) == 2  # nothing is overwritten by default


def test_two_inputs_with_one_name_are_refused(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / sub / "car.png")
    with pytest.raises(CutoutError, match="would both be written"):
        cutout_files(None, expand_inputs([tmp_path / "a", tmp_path / "b"]), tmp_path / "out")


def test_cli_cutout_white_jpg_with_shadow(photos, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["cutout", str(photos / "*.png"), "--out", str(out),
                                 "--background", "white", "--format", "jpg", "--shadow",
                                 "--feather", "2"])
    assert result.exit_code == 0, result.output
    image = Image.open(out / "small.jpg")
    assert image.mode == "RGB" and image.size == (640, 427)
    assert np.asarray(image)[:20].min() > 240  # the studio backdrop became white

    refused = runner.invoke(app, ["cutout", str(photos), "--out", str(out), "--format", "jpg"])
    assert refused.exit_code == 1 and "no alpha channel" in refused.output
    partial = runner.invoke(app, ["cutout", str(photos), "--out", str(tmp_path / "all")])
    assert partial.exit_code == 3 and "cut_short.jpg" in partial.output
    missing = runner.invoke(app, ["cutout", str(tmp_path / "nowhere"), "--out", str(out)])
    assert missing.exit_code == 1 and "no such file, folder or glob" in missing.output


def test_a_sideways_photo_is_cut_out_as_displayed_and_bad_ones_named(shipped_predictor, bad_photos,
                                                                     held_out, tmp_path):
    """EXIF orientation 6 is cut out upright; a pixel bomb, an empty and a text file are
    failures that name the file and say what it is, and the photos after them are still cut."""
    inputs = [bad_photos[k] for k in ("bomb", "empty", "text", "half_with_end", "sideways")]
    summary = cutout_files(shipped_predictor, inputs, tmp_path / "out")
    assert [p.name for p in summary.written] == ["sideways.png"]
    failed = {path.name: problem for path, problem in summary.failed}
    assert sorted(failed) == ["bomb.png", "empty.jpg", "half_with_end.jpg", "notes.jpg"]
    assert all(str(bad_photos["bomb"].parent / name) in problem for name, problem in failed.items())
    assert "megapixels" in failed["bomb.png"] and "empty file" in failed["empty.jpg"]
    assert "not an image" in failed["notes.jpg"] and "truncated" in failed["half_with_end.jpg"]
    cut = Image.open(summary.written[0])
    assert cut.size == (1918, 1280)  # as displayed; stored it is 1280 wide
    assert dice_and_iou(np.asarray(cut)[..., 3] > 127, read_mask(held_out[1]))[0] >= 0.98


def test_cli_cutout_out_that_is_a_file_is_refused_before_the_model_loads(tmp_path):
    photo = tmp_path / "car.png"
    Image.new("RGB", (8, 8)).save(photo)
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    for out in (afile, afile / "cutouts"):
        result = CliRunner().invoke(app, ["cutout", str(photo), "--out", str(out),
                                          "--model", str(tmp_path / "none.safetensors")])
        assert result.exit_code == 1 and "is a file, not a folder" in result.output, result.output
    assert afile.read_text() == "keep me"


def test_cli_cutout_conflicting_or_malformed_options_exit_2_naming_them(tmp_path):
    """Mistakes in the options are usage errors (exit 2) that name the option, found before the
    model loads and before anything is written: an --out of a format carmask does not write (it
    would have become a folder of that name), one file for several photos, hard edges with a
    feather, a canvas that is no WIDTHxHEIGHT."""
    photos = []
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
        photos.append(str(tmp_path / name))
    cases = [([photos[0], "--out", str(tmp_path / "x.gif")], "--out", "not .gif"),
             ([*photos, "--out", str(tmp_path / "z.png")], "--out", "for 2 photos: give a folder"),
             ([photos[0], "--out", str(tmp_path / "x.png"), "--hard-edges", "--feather", "3"],
              "--hard-edges and --feather", "soft"),
             ([photos[0], "--out", str(tmp_path / "x.png"), "--canvas", "1600by1200"], "--canvas",
              "such as 1600x1200"),
             ([photos[0], "--out", str(tmp_path / "x.png"), "--canvas", "1600x1200", "--align", "top"],
              "--align", "center, bottom"),
             ([photos[0], "--out", str(tmp_path / "x.png"), "--background", "notacolour"],
              "--background", "notacolour")]
    for args, option, detail in cases:
        result = CliRunner().invoke(app, ["cutout", *args, "--model", str(tmp_path / "none.safetensors")])
        assert result.exit_code == 2, (args, result.output)
        assert option in result.output and detail in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # nothing written
