"""Bad input to `carmask evaluate` and `carmask predict` (issue 27, third round): each is refused
in one line naming the file and the problem, before any work where it can be known then, and
never ends in a traceback.

The model is a stand-in (the left half of each photo is car) so that the tests take no time:
what is tested is what happens around the masks, not the masks."""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from carmask.cli import app
from carmask.data.io import DataError, read_mask, read_photo_header
from carmask.inference.streaming import Prediction
from carmask.kaggle import rle
from carmask.kaggle.submission import check_submission

KAGGLE = (1918, 1280)  # (width, height) of every Carvana photo, and of every submission row


class HalfCar:
    """A model stand-in: the left half of each photo, at the photo's displayed size."""

    name, size, tta, backend, device, batch = "half-car", (64, 96), False, "stub", "cpu", 1
    config = {"architecture": "half-car"}
    path = Path("half-car.onnx")

    def predict_paths(self, paths, workers=None):
        for path in map(Path, paths):
            try:
                height, width = read_photo_header(path).size
            except DataError as error:
                yield Prediction(path, None, error=str(error))
                continue
            yield Prediction(path, half_mask(height, width), model="studio")

    def predict(self, photos):
        return [half_mask(*photo.shape[:2]) for photo in photos]


def half_mask(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[:, : width // 2] = True
    return mask


@pytest.fixture
def loaded(monkeypatch) -> list:
    """The stand-in model in place of every model the CLI loads; the list of loads, so a test
    can tell that nothing was loaded (the check came before any work)."""
    loads = []

    def create_predictor(*args, **kwargs):
        loads.append(args)
        return HalfCar()
    monkeypatch.setattr("carmask.inference.route.create_predictor", create_predictor)
    return loads


def run(*args):
    result = CliRunner().invoke(app, [*map(str, args)])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def error_line(result) -> str:
    """The one `error: ...` line of a refused command."""
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def outdoor_folder(root: Path, count: int = 3, size: tuple[int, int] = (96, 64),
                   mask_size: tuple[int, int] | None = None) -> Path:
    """A small outdoor folder (images/, masks/, index.csv) whose true masks are what the
    stand-in predicts: each scores Dice 1."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for index in range(count):
        name = f"car{index}"
        Image.new("RGB", size, (40 * index, 90, 200)).save(root / "images" / f"{name}.jpg")
        width, height = mask_size or size
        mask = Image.fromarray(half_mask(height, width).astype(np.uint8) * 255)
        mask.save(root / "masks" / f"{name}.png")
        rows.append({"name": name, "kind": "web", "source_path": f"export/valid/{name}.jpg"})
    with open(root / "index.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["name", "kind", "source_path"])
        writer.writeheader()
        writer.writerows(rows)
    return root


# -- evaluate: true masks that cannot be scored ---------------------------------------------------
def grey_mask(path: Path) -> None:
    """A greyscale mask: a ramp of 48 grey levels."""
    Image.fromarray(np.tile(np.arange(96, dtype=np.uint8) // 2 * 5, (64, 1))).save(path)


def anti_aliased_mask(path: Path) -> None:
    """A 0/255 mask with a soft edge of greys, as a drawing program saves one."""
    values = half_mask(64, 96).astype(np.uint8) * 255
    values[:, 47] = 128
    values[:, 48] = 64
    Image.fromarray(values).save(path)


def text_mask(path: Path) -> None:
    path.write_text("not a mask\n")


BAD_MASKS = {"greyscale": (grey_mask, "not binary"), "anti-aliased": (anti_aliased_mask, "not binary"),
             "not an image": (text_mask, "not a readable mask")}


@pytest.mark.parametrize("kind", BAD_MASKS)
def test_evaluate_names_a_mask_it_cannot_score_and_scores_the_rest(kind, loaded, tmp_path):
    make, problem = BAD_MASKS[kind]
    folder = outdoor_folder(tmp_path / "outdoor")
    make(folder / "masks" / "car1.png")
    result = run("evaluate", "--data", folder, "--json")
    assert result.exit_code == 3, result.output  # INCOMPLETE: the mean leaves one photo out
    assert f"{folder / 'masks' / 'car1.png'}: " in result.output and problem in result.output
    assert '"images": 2' in result.output and '"unscored": 1' in result.output


def test_evaluate_with_no_mask_it_can_score_fails_in_one_line(loaded, tmp_path):
    folder = outdoor_folder(tmp_path / "outdoor", count=2)
    for name in ("car0", "car1"):
        grey_mask(folder / "masks" / f"{name}.png")
    result = run("evaluate", "--data", folder)
    assert result.exit_code == 1
    line = error_line(result)
    assert "none of the 2" in line and "car0.png" in line and "not binary" in line


def test_evaluate_with_every_mask_the_wrong_size_names_the_files_and_sizes(loaded, tmp_path):
    folder = outdoor_folder(tmp_path / "outdoor", size=(96, 64), mask_size=(48, 32))
    result = run("evaluate", "--data", folder, "--out", tmp_path / "report")
    assert result.exit_code == 1
    line = error_line(result)  # once a KeyError: 'dice'
    assert "none of the 3" in line
    assert f"{folder / 'images' / 'car0.jpg'} is 96x64" in line
    assert f"{folder / 'masks' / 'car0.png'} is 48x32" in line
    assert not (tmp_path / "report" / "index.html").exists()


def test_evaluate_with_one_mask_the_wrong_size_scores_the_others(loaded, tmp_path):
    folder = outdoor_folder(tmp_path / "outdoor")
    Image.fromarray(half_mask(32, 48).astype(np.uint8) * 255).save(folder / "masks" / "car2.png")
    result = run("evaluate", "--data", folder, "--json")
    assert result.exit_code == 3
    assert "is 96x64" in result.output and "car2.png is 48x32" in result.output
    assert '"images": 2' in result.output


# -- evaluate: an outdoor folder's index.csv -------------------------------------------------------
HEADER = "name,kind,source_path\n"
BAD_INDEXES = {  # what index.csv holds, and the line to name
    "short row": ((HEADER + "car0,web,export/valid/car0.jpg\ncar1,web\n").encode(), "line 3"),
    "long row": ((HEADER + "car0,web,export/valid/car0.jpg,extra\n").encode(), "line 2"),
    "cp1252": ((HEADER + "car0,web,export/valid/caf\u00e9.jpg\n").encode("cp1252"), "line 2"),
    "name twice": ((HEADER + "car0,web,a/valid/x.jpg\n\ncar0,web,a/valid/x.jpg\n").encode(), "line 4"),
    "no name": ((HEADER + ",web,export/valid/x.jpg\n").encode(), "line 2"),
    "a path for a name": ((HEADER + "../images/car0,web,export/valid/x.jpg\n").encode(), "line 2"),
}


@pytest.mark.parametrize("kind", BAD_INDEXES)
def test_an_outdoor_index_it_cannot_read_is_named_with_its_line(kind, loaded, tmp_path):
    content, line = BAD_INDEXES[kind]
    folder = outdoor_folder(tmp_path / "outdoor")
    (folder / "index.csv").write_bytes(content)
    result = run("evaluate", "--data", folder)
    assert result.exit_code == 1
    assert error_line(result).startswith(f"error: {folder / 'index.csv'}: {line}")


# -- evaluate: its --out, checked before any scoring --------------------------------------------
@pytest.fixture
def read_only(tmp_path, monkeypatch) -> Path:
    """A folder nobody may write in. Root writes anywhere, so there the check is shown what any
    other user's would see."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, *args, **kwargs: (
            False if Path(path) == folder and mode & os.W_OK else access(path, mode, *args, **kwargs)))
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("kind", ["a file", "a read-only folder", "a broken link", "a report"])
def test_evaluate_refuses_its_out_before_any_scoring(kind, loaded, read_only, tmp_path):
    out = {"a file": tmp_path / "file", "a read-only folder": read_only,
           "a broken link": tmp_path / "link", "a report": tmp_path / "report"}[kind]
    if kind == "a file":
        out.write_text("precious")
    elif kind == "a broken link":
        out.symlink_to(tmp_path / "nowhere" / "report")
    elif kind == "a report":
        out.mkdir()
        (out / "index.html").write_text("precious")
    result = run("evaluate", "--data", outdoor_folder(tmp_path / "outdoor"), "--out", out)
    assert result.exit_code == 1
    assert str(out) in error_line(result)
    assert loaded == []  # refused before the model loaded, let alone scored
    assert not (tmp_path / "nowhere").exists()


# -- predict: outputs that clash, checked before any work ----------------------------------------
@pytest.fixture
def photos(tmp_path) -> Path:
    """Three small photos of one size."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (96, 64), (60 * index, 90, 200)).save(folder / f"p{index}.jpg")
    return folder


@pytest.mark.parametrize("clash", ["the same path", "the spool", "the lock", "inside the submission",
                                   "a mask file"])
def test_predict_refuses_outputs_that_clash_before_any_work(clash, loaded, photos, tmp_path):
    out = tmp_path / "sub.csv"
    masks_dir = {"the same path": out, "the spool": tmp_path / "sub.csv.spool",
                 "the lock": tmp_path / "sub.csv.lock", "inside the submission": out / "masks",
                 "a mask file": tmp_path / "masks"}[clash]
    if clash == "a mask file":  # the submission named as the mask of a photo
        out = masks_dir / "p1_mask.png"
    result = run("predict", photos, "--out", out, "--masks-dir", masks_dir)
    assert result.exit_code == 1
    assert "--masks-dir" in error_line(result)
    assert loaded == []
    assert not out.exists() and not (masks_dir / "p0_mask.png").exists()


@pytest.mark.parametrize("kind", ["dangling", "a loop"])
def test_predict_refuses_a_broken_link_for_masks_dir_before_any_work(kind, loaded, photos, tmp_path):
    masks_dir = tmp_path / "masks"
    masks_dir.symlink_to(tmp_path / "nowhere" / "masks" if kind == "dangling" else masks_dir)
    result = run("predict", photos, "--masks-dir", masks_dir)
    assert result.exit_code == 1
    assert f"{masks_dir}: the --masks-dir is a broken link" in error_line(result)
    assert loaded == [] and not (tmp_path / "nowhere").exists()


# -- predict: a full disk ------------------------------------------------------------------------
def disk_full(after: int):
    """A writer that works `after` times, then finds no space left on the device."""
    calls = []

    def wrap(write):
        def full(*args, **kwargs):
            calls.append(args)
            if len(calls) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return write(*args, **kwargs)
        return full
    return wrap


@pytest.mark.parametrize("where", ["a row", "the submission", "a mask file"])
def test_a_full_disk_stops_predict_in_one_line_and_resume_finishes(where, loaded, photos, tmp_path,
                                                                   monkeypatch):
    from carmask.kaggle import writer

    out, masks_dir = tmp_path / "sub.csv", tmp_path / "masks"
    outputs = ["--out", out] if where != "a mask file" else ["--masks-dir", masks_dir]
    with monkeypatch.context() as patch:
        if where == "a row":  # the spool, each row as it is made
            append = writer.SubmissionWriter._append
            patch.setattr(writer.SubmissionWriter, "_append", disk_full(1)(append))
        elif where == "the submission":  # the rows in order into the file, at its fsync
            patch.setattr(writer.os, "fsync", disk_full(0)(os.fsync))
        else:
            import carmask.data.io
            patch.setattr(carmask.data.io, "save_mask", disk_full(1)(carmask.data.io.save_mask))
        stopped = run("predict", photos, *outputs)
    assert stopped.exit_code == 1
    line = error_line(stopped)
    assert "the disk is full" in line and "--resume" in line
    if where == "a mask file":
        assert f"1 of 3 mask files in {masks_dir}" in line
    else:
        kept = {"a row": "1 of 3 rows", "the submission": "3 of 3 rows"}[where]
        assert f"{kept} in {out}.spool" in line and not out.exists()
    resumed = run("predict", photos, *outputs, "--resume")
    assert resumed.exit_code == 0, resumed.output
    if where == "a mask file":
        assert sorted(p.name for p in masks_dir.iterdir()) == [f"p{i}_mask.png" for i in range(3)]
    else:
        assert check_submission(out, [f"p{i}.jpg" for i in range(3)], shape=(64, 96)).ok
        assert not Path(f"{out}.spool").exists()


# -- predict: a Kaggle submission's rows are all 1918x1280 --------------------------------------
def sideways(path: Path, size: tuple[int, int]) -> Path:
    """A photo stored at `size` whose EXIF says turn it a quarter: shown (and masked) turned."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", size).save(path, exif=exif.tobytes())
    return path


@pytest.fixture
def kaggle_photos(tmp_path) -> Path:
    """Two photos at Kaggle's size and, as the next probe may try, one at half of it and one
    stored at Kaggle's size but shown turned (its mask would be 1280 wide)."""
    folder = tmp_path / "test"
    folder.mkdir()
    Image.new("RGB", KAGGLE).save(folder / "car_01.jpg")
    Image.new("RGB", KAGGLE).save(folder / "car_02.jpg")
    Image.new("RGB", (959, 640)).save(folder / "car_03.jpg")
    sideways(folder / "car_04.jpg", KAGGLE)
    return folder


def test_a_photo_not_at_kaggles_size_gets_no_row_and_says_why(loaded, kaggle_photos, tmp_path):
    out = tmp_path / "sub.csv"
    result = run("predict", kaggle_photos, "--out", out)
    assert result.exit_code == 3  # INCOMPLETE
    assert "2 not 1918x1280" in result.output and "decode their rows wrongly" in result.output
    with open(tmp_path / "sub.failures.csv", newline="") as file:
        failures = {row["img"]: row["error"] for row in csv.DictReader(file)}
    assert set(failures) == {"car_03.jpg", "car_04.jpg"}
    assert "959x640" in failures["car_03.jpg"] and "1280x1918" in failures["car_04.jpg"]
    rows = dict(line.split(",") for line in out.read_text().splitlines()[1:])
    assert rows["car_03.jpg"] == rows["car_04.jpg"] == ""  # left empty, not wrong
    assert np.array_equal(rle.decode(rows["car_01.jpg"]), half_mask(1280, 1918))
    assert check_submission(out, sorted(failures | {"car_01.jpg": "", "car_02.jpg": ""})).ok


def test_mask_files_take_photos_of_any_size(loaded, kaggle_photos, tmp_path):
    masks_dir = tmp_path / "masks"
    alone = run("predict", kaggle_photos, "--masks-dir", masks_dir)
    assert alone.exit_code == 0, alone.output
    assert read_mask(masks_dir / "car_03_mask.png").shape == (640, 959)
    # beside a submission, the mask file is still written; only the row is left empty
    both = run("predict", kaggle_photos, "--masks-dir", tmp_path / "both", "--out", tmp_path / "sub.csv")
    assert both.exit_code == 3
    assert len(list((tmp_path / "both").iterdir())) == 4


def test_a_submission_of_photos_all_of_another_size_is_made_at_that_size(loaded, photos, tmp_path):
    # a synthetic data set, say: every row at its one size
    result = run("predict", photos, "--out", tmp_path / "sub.csv")
    assert result.exit_code == 0, result.output
    assert check_submission(tmp_path / "sub.csv", ["p0.jpg", "p1.jpg", "p2.jpg"], shape=(64, 96)).ok


def test_the_size_of_a_submissions_rows():
    from carmask.inference.job import submission_size

    kaggle, half, small = (1280, 1918), (640, 959), (64, 96)
    assert submission_size([half, half, kaggle, None]) == kaggle  # Kaggle's wherever it is
    assert submission_size([small, half, half]) == half  # else the most common
    assert submission_size([small, half]) == small  # ... the first of those as common
    assert submission_size([None]) is None


def test_submission_check_refuses_a_run_past_kaggles_size(tmp_path):
    last = KAGGLE[0] * KAGGLE[1]
    (tmp_path / "sub.csv").write_text(f"img,rle_mask\na.jpg,{last} 1\nb.jpg,{last} 2\n")
    result = run("submission", "check", tmp_path / "sub.csv")
    assert result.exit_code == 1
    assert "b.jpg: invalid RLE" in result.output and "past the 1280x1918 image" in result.output
    assert "a.jpg" not in result.output
