"""Bad input, third round (issue 27): a cut-out too big for its format (WebP holds 16383 pixels
a side, JPEG 65500) or one its encoder fails on is a 422 from the service and a failed photo of
a batch, never a 500 or an aborted batch; two photos in one upload are refused naming both; and
`carmask data index` says of a symbolic link where it points and what is wrong there."""

from __future__ import annotations

import io
import json
import os

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from carmask.apps.serve import BackgroundServer, ServeConfig, create_app
from carmask.cli import app
from conftest import make_kaggle_folder


def png(width: int, height: int, colour=(90, 90, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(shipped_predictor):
    with BackgroundServer(create_app(shipped_predictor, config=ServeConfig(cache=0))) as running, \
            httpx.Client(base_url=running.url, timeout=120) as http:
        yield http


# -- 1. a cut-out its format cannot hold -------------------------------------------------------
@pytest.mark.parametrize("size, form, limit", [
    ((16384, 8), {"format": "webp"}, 16383),  # one pixel over WebP's limit
    ((8, 100_000), {"format": "webp"}, 16383),  # tall, not wide
    ((65501, 4), {"format": "jpg", "background": "white"}, 65500),  # libjpeg's limit
])
def test_a_cutout_too_big_for_its_format_is_a_422_naming_the_limit(client, size, form, limit):
    response = client.post("/v1/cutout", files={"image": ("long.png", png(*size))}, data=form)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "too_large_for_format" and error["message"].startswith("format")
    assert str(limit) in error["message"] and f"{size[0]}x{size[1]}" in error["message"]
    assert "use png" in error["message"]
    assert client.get("/healthz").json()["status"] == "ok"


def test_a_long_photo_is_cut_out_as_png_or_on_a_canvas_that_fits(client):
    long = png(16384, 8)
    as_png = client.post("/v1/cutout", files={"image": ("long.png", long)}, data={"format": "webp",
                                                                                "canvas": "800x600"})
    assert as_png.status_code == 200, as_png.text  # the canvas, not the photo, is encoded
    assert Image.open(io.BytesIO(as_png.content)).size == (800, 600)


def test_an_encoder_failure_is_a_422_not_a_500(client, monkeypatch):
    photo = png(96, 64)

    def broken(self, *args, **kwargs):
        raise OSError("encoder error -2")
    monkeypatch.setattr(Image.Image, "save", broken)
    for endpoint, field, form in (("/v1/cutout", "image", {"format": "webp"}),
                                  ("/v1/mask", "image", {}), ("/api/remove", "file", {})):
        response = client.post(endpoint, files={field: ("car.png", photo)}, data=form)
        assert response.status_code == 422, (endpoint, response.text)
        error = response.json()["error"]
        assert error["code"] == "cannot_encode" and error["message"].startswith("format")
        assert "encoder error -2" in error["message"] and "96x64" in error["message"]


def test_the_batch_records_a_photo_too_big_for_its_format_and_goes_on(held_out, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(held_out[0]).resize((320, 213)).save(folder / "car.png")
    (folder / "long.png").write_bytes(png(16384, 8))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["cutout", str(folder), "--out", str(out), "--format", "webp",
                                      "--model", "studio"])
    assert result.exit_code == 3, result.output  # some photos could not be written
    assert (out / "car.webp").is_file() and not (out / "long.webp").exists()
    entries = {os.path.basename(e["input"]): e
               for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert entries["car.png"]["status"] == "written" and entries["long.png"]["status"] == "failed"
    assert "16383" in entries["long.png"]["error"] and "long.png" in entries["long.png"]["error"]
    assert "long.png" in result.output and "Traceback" not in result.output


def test_one_photo_too_big_for_its_format_fails_before_the_model_runs(shipped_predictor, tmp_path):
    from carmask.apps.batch import cutout_bytes
    from carmask.apps.cutout import CutoutOptions, EncodeError

    class Unused:  # the size is known from the photo: no prediction is made
        decode_cover = shipped_predictor.decode_cover

        def predict_decoded(self, *args):
            raise AssertionError("the model ran for a photo that cannot be written")
    with pytest.raises(EncodeError, match="format webp holds at most 16383 pixels a side"):
        cutout_bytes(Unused(), png(20000, 10), CutoutOptions(), "webp", name="long.png")
    single = tmp_path / "long.png"
    single.write_bytes(png(16384, 8))
    result = CliRunner().invoke(app, ["cutout", str(single), "--out", str(tmp_path / "long.webp"),
                                      "--model", "studio"])
    assert result.exit_code == 3 and "16383" in result.output, result.output


def test_a_report_picture_jpeg_cannot_hold_is_a_png():
    from carmask.apps.report import image_to_data_uri
    assert image_to_data_uri(np.zeros((70_000, 4, 3), np.uint8)).startswith("data:image/png;")
    assert image_to_data_uri(np.zeros((70, 4, 3), np.uint8)).startswith("data:image/jpeg;")


# -- 2. two photos in one upload ---------------------------------------------------------------
@pytest.mark.parametrize("endpoint, fields", [
    ("/v1/mask", ("image", "image")), ("/v1/cutout", ("image", "image")),
    ("/api/remove", ("file", "file")), ("/v1/mask", ("file", "image")),
    ("/v1/cutout", ("image", "file")), ("/api/remove", ("file", "image")),
])
def test_two_photos_in_one_upload_are_refused_naming_both(client, endpoint, fields):
    files = [(fields[0], ("first.png", png(96, 64))), (fields[1], ("second.png", png(96, 64, (1, 2, 3))))]
    response = client.post(endpoint, files=files)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "several_photos" and error["message"].startswith(fields[0])
    assert all(name in error["message"] for name in (*fields, "'first.png'", "'second.png'"))


def test_many_files_and_files_nested_in_one_field_are_refused_by_name(client):
    many = [("image", (f"{i}.png", png(8, 8))) for i in range(20)]  # over the form's file limit
    response = client.post("/v1/mask", files=many)
    assert response.status_code == 422 and response.json()["error"]["code"] == "several_photos"
    assert response.json()["error"]["message"].startswith("image: more than")
    nested = (b"--inner\r\nContent-Disposition: file; filename=\"a.png\"\r\n\r\n" + png(8, 8)
              + b"\r\n--inner--\r\n")
    body = (b"--outer\r\nContent-Disposition: form-data; name=\"file\"\r\nContent-Type: "
            b"multipart/mixed; boundary=inner\r\n\r\n" + nested + b"\r\n--outer--\r\n")
    response = client.post("/api/remove", content=body,
                           headers={"content-type": "multipart/form-data; boundary=outer"})
    assert response.status_code == 422 and "multipart/mixed" in response.json()["error"]["message"]
    two_backdrops = client.post("/v1/cutout", files=[
        ("image", ("car.png", png(96, 64))), ("background_image", ("sky.png", png(8, 8))),
        ("background_image", ("sea.png", png(8, 8)))])
    assert two_backdrops.status_code == 422
    assert "'sky.png' and 'sea.png'" in two_backdrops.json()["error"]["message"]


# -- 3. symbolic links in a data folder --------------------------------------------------------
@pytest.fixture
def linked_folder(carvana, tmp_path):
    """A one-car Kaggle folder (its photos are symbolic links) with a bad link of each kind."""
    root = make_kaggle_folder(carvana, tmp_path / "kaggle", cars=1, test_images=1)
    train = root / "train"
    photos = sorted(train.glob("*.jpg"))
    for photo in photos[:6]:
        photo.unlink()
    (root / "a_folder").mkdir()
    photos[0].symlink_to("/nowhere/x.jpg")
    photos[1].symlink_to("../gone/y.jpg")
    photos[2].symlink_to(photos[2].name)  # itself
    (train / "other.jpg").symlink_to(photos[3].name)
    photos[3].symlink_to("other.jpg")  # a loop of two
    photos[4].symlink_to(root / "a_folder")
    photos[5].mkdir()  # a folder named as a photo
    mask = root / "train_masks" / f"{photos[6].stem}_mask.gif"
    mask.unlink()
    mask.symlink_to(root / "a_folder")
    (root / "metadata.csv").unlink()
    (root / "metadata.csv").symlink_to("/nowhere/metadata.csv")
    for photo in (root / "test").iterdir():
        photo.unlink()
    (root / "test").rmdir()
    (root / "test").symlink_to("/nowhere/test")
    return root, photos, mask


def test_data_index_says_where_each_bad_link_points_and_what_is_wrong(linked_folder):
    from carmask.data.layout import index_dataset
    root, photos, mask = linked_folder
    index = index_dataset(root, check_pixels=False)
    said = {p.path: (p.message, p.kind, p.fatal) for p in index.problems}
    assert said[photos[0]] == ("a symbolic link to /nowhere/x.jpg, which does not exist", "broken-link", True)
    assert said[photos[1]][0] == (f"a symbolic link to ../gone/y.jpg ({root / 'gone' / 'y.jpg'}), "
                                  "which does not exist")
    assert said[photos[2]][0] == "a symbolic link to itself: a loop of links that leads nowhere"
    assert said[photos[3]][0] == (f"a symbolic link to other.jpg ({root / 'train' / 'other.jpg'}), a "
                                  f"symbolic link back to {photos[3].name} ({photos[3]}): a loop of "
                                  "links that leads nowhere")
    assert said[photos[4]] == (f"a symbolic link to {root / 'a_folder'}, which is a folder, not a photo",
                               "not-a-file", True)
    assert said[photos[5]] == ("a folder, not a photo", "not-a-file", True)
    assert said[mask][0] == f"a symbolic link to {root / 'a_folder'}, which is a folder, not a mask"
    assert said[root / "test"] == ("the folder is a symbolic link to /nowhere/test, which does not "
                                   "exist: its files cannot be read", "broken-link", True)
    assert said[root / "metadata.csv"][0] == ("a symbolic link to /nowhere/metadata.csv, which does "
                                              "not exist: makes and years will be unknown")
    # their photos and masks are there, only unusable: "no mask" or "no image" would mislead
    assert not [p for p in index.problems if p.kind in ("missing-mask", "orphan-mask")]
    result = CliRunner().invoke(app, ["data", "index", "--data", str(root)], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"error: {photos[0]}: a symbolic link to /nowhere/x.jpg, which does not exist" in result.output


def test_a_data_folder_that_is_a_bad_link_says_so(tmp_path):
    cases = {"dangling": ("/nowhere/data", "the data folder is a symbolic link to /nowhere/data, "
                                           "which does not exist"),
             "loop": ("loop", "the data folder is a symbolic link to itself: a loop of links that "
                              "leads nowhere")}
    afile = tmp_path / "notes.txt"
    afile.write_text("not data")
    cases["to_a_file"] = (str(afile), f"the data folder is a symbolic link to {afile}, which is a "
                                      "file, not a data folder")
    for name, (target, message) in cases.items():
        (tmp_path / name).symlink_to(target)
        result = CliRunner().invoke(app, ["data", "index", "--data", str(tmp_path / name)],
                                    env={"COLUMNS": "300"})
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert message in " ".join(result.output.split()), result.output
