import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from carmask.data import index_dataset
from carmask.data.io import DataError, read_mask

BAD = "0" * 12  # a car id that sorts first


def carmask(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carmask", *args], capture_output=True, text=True)


def test_real_folder_has_no_problems(carvana):
    index = index_dataset(carvana)
    summary = index.summary()
    # Expectations come from the folder itself: it has grown before (100 → 160 cars).
    photos = sorted((carvana / "train").glob("*.jpg"))
    cars = {p.name[:12] for p in photos}
    tests = list((carvana / "test").glob("*.jpg"))
    metadata = pd.read_csv(carvana / "metadata.csv")
    makes = set(metadata[metadata["id"].isin(cars)]["make"])
    assert summary["train_cars"] == len(cars) and summary["train_images"] == len(photos)
    assert summary["masks"] == len(list((carvana / "train_masks").glob("*_mask.gif"))) == len(photos)
    assert summary["test_images"] == len(tests) and summary["makes"] == len(makes)
    assert index.problems == []
    assert index.image_sizes == {(1918, 1280): len(photos) + len(tests)}
    # Coverage from the validation pass equals the masks' own car share (SOURCES.md: ~9% to ~37%).
    assert len(index.coverage) == len(photos)
    for photo in photos[:: max(1, len(photos) // 7)]:
        mask = read_mask(carvana / "train_masks" / f"{photo.stem}_mask.gif")
        assert index.coverage[photo.stem] == pytest.approx(mask.mean(), abs=1e-9)
    coverage = np.array(list(index.coverage.values()))
    assert 0.05 < coverage.min() < coverage.mean() < coverage.max() < 0.5
    acura = [r for r in index.train if r.car_id == "00087a6bd4dc"]
    assert len(acura) == 16 and {r.make for r in acura} == {"Acura"} and acura[0].year == 2014


@pytest.fixture
def planted(small_real_folder: Path) -> dict[str, Path]:
    """The small real folder with one of each problem planted in it."""
    root = small_real_folder
    train, masks = root / "train", root / "train_masks"
    images = sorted(train.glob("*.jpg"))
    first, second, third, fourth, fifth, sixth = (p.stem for p in images[:6])
    files = {}

    # truncated JPEG: the first 60% of a real photo
    data = images[0].read_bytes()
    images[0].unlink()
    images[0].write_bytes(data[: int(len(data) * 0.6)])
    files["truncated"] = images[0]
    # missing mask
    (masks / f"{second}_mask.gif").unlink()
    files["missing-mask"] = train / f"{second}.jpg"
    # 2-frame GIF
    mask = read_mask(masks / f"{third}_mask.gif")
    path = masks / f"{third}_mask.gif"
    path.unlink()
    frame = Image.fromarray(mask.astype(np.uint8)).convert("P")
    frame.save(path, save_all=True, append_images=[frame.copy().rotate(5)], optimize=False)
    files["multi-frame"] = path
    # mask of another size
    path = masks / f"{fourth}_mask.gif"
    mask = read_mask(path)
    path.unlink()
    Image.fromarray(mask.astype(np.uint8)).resize((959, 640)).save(path, optimize=False)
    files["size-mismatch"] = path
    # a mask with grey (anti-aliased) edges
    path = masks / f"{fifth}_mask.gif"
    mask = read_mask(path)
    path.unlink()
    grey = mask.astype(np.uint8) * 255
    grey[:-1][np.diff(mask.astype(np.int8), axis=0) != 0] = 128
    Image.fromarray(grey).save(path, optimize=False)
    files["not-binary"] = path
    # a 0/255 mask is fine
    path = masks / f"{sixth}_mask.gif"
    mask = read_mask(path)
    path.unlink()
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, optimize=False)
    files["ok-0-255"] = path
    # a bad name, an orphan mask, a duplicate id, an unreadable photo, a wrong-size photo
    shutil.copy(images[7], train / "not-a-car.jpg")
    files["bad-name"] = train / "not-a-car.jpg"
    orphan = masks / f"{BAD}_03_mask.gif"
    shutil.copy(masks / f"{sixth}_mask.gif", orphan)
    files["orphan-mask"] = orphan
    duplicate = train / f"{images[8].stem}.png"
    duplicate.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    files["duplicate-id"] = duplicate
    unreadable = root / "test" / f"{BAD}_01.jpg"
    unreadable.write_bytes(b"this is not a JPEG at all")
    files["unreadable"] = unreadable
    small = root / "test" / f"{BAD}_02.jpg"
    Image.new("RGB", (640, 480), "white").save(small)
    files["wrong-size"] = small
    return files


def test_index_finds_each_planted_problem_with_its_file(small_real_folder, planted):
    index = index_dataset(small_real_folder)
    found = {(p.kind, p.path) for p in index.problems}
    for kind, path in planted.items():
        if kind.startswith("ok"):
            assert not [p for p in index.problems if p.path == path], f"{path.name} flagged"
        else:
            assert (kind, path) in found, f"{kind} not reported for {path.name}: {found}"
    assert all(p.fatal for p in index.problems if p.kind != "missing-metadata")
    # The unknown car has no metadata row: a warning, not an error.
    assert any(p.kind == "missing-metadata" and not p.fatal and BAD in p.message
               for p in index.problems)


def test_cli_prints_every_problem_and_exits_nonzero(small_real_folder, planted):
    result = carmask("data", "index", "--data", str(small_real_folder), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    listed = {(p["kind"], p["path"]) for p in report["problem_list"]}
    for kind, path in planted.items():
        if not kind.startswith("ok"):
            assert (kind, str(path)) in listed
    plain = carmask("data", "index", "--data", str(small_real_folder))
    assert plain.returncode == 1
    assert planted["truncated"].name in plain.stdout.replace("\n", "")


def test_clean_folder_exits_zero(small_real_folder):
    result = carmask("data", "index", "--data", str(small_real_folder))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems found" in result.stdout


def test_missing_folder_is_a_clear_error(tmp_path):
    result = carmask("data", "index", "--data", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "nowhere: data folder does not exist" in result.stderr


def test_cli_prints_paths_and_kind_tags_as_they_are(small_real_folder):
    """Paths are printed as written: no rich markup read in them, control characters escaped."""
    photo = sorted((small_real_folder / "train").glob("*.jpg"))[0]
    shutil.copy(photo, small_real_folder / "train" / "photo[bold]_01.jpg")
    shutil.copy(photo, small_real_folder / "train" / "car\x1b[2J_01.jpg")
    result = carmask("data", "index", "--data", str(small_real_folder))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.endswith("photo[bold]_01.jpg: name does not match <12 hex>_<NN> with NN in "
                             "01..16 [bad-name]") for line in lines), result.stdout
    assert any("car\\x1b[2J_01.jpg: name does not match" in line for line in lines)
    assert "\x1b" not in result.stdout + result.stderr
    shutil.copy(photo, small_real_folder / "train" / "car\x9b\u202e_02.jpg")  # C1 CSI, bidi
    plain = carmask("data", "index", "--data", str(small_real_folder))
    assert "car\\x9b\\u202e_02.jpg: name does not match" in plain.stdout
    as_json = carmask("data", "index", "--data", str(small_real_folder), "--json")
    listed = {p["path"] for p in json.loads(as_json.stdout)["problem_list"]}
    assert str(small_real_folder / "train" / "car\x9b\u202e_02.jpg") in listed
    for output in (plain.stdout, as_json.stdout):
        assert not {"\x1b", "\x9b", "\u202e"} & set(output)


def test_broken_links_are_problems_naming_the_link(small_real_folder):
    train = small_real_folder / "train"
    loop = train / f"{BAD}_01.jpg"
    loop.symlink_to(loop.name)  # a link to itself
    dangling = train / f"{BAD}_02.jpg"
    dangling.symlink_to(small_real_folder / "gone.jpg")
    mask = small_real_folder / "train_masks" / f"{BAD}_03_mask.gif"
    mask.symlink_to(small_real_folder / "gone.gif")
    index = index_dataset(small_real_folder, check_pixels=False)
    broken = {p.path: p.message for p in index.problems if p.kind == "broken-link"}
    assert set(broken) == {loop, dangling, mask}
    assert broken[loop] == "a symbolic link to itself: a loop of links that leads nowhere"
    assert f"a symbolic link to {small_real_folder / 'gone.jpg'}, which does not exist" == broken[dangling]
    assert all(p.fatal for p in index.problems if p.kind == "broken-link")
    result = carmask("data", "index", "--data", str(small_real_folder))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: {loop}: a symbolic link to itself" in result.stdout


def write_metadata(root: Path, *rows: str) -> None:
    (root / "metadata.csv").write_text("".join(f"{row}\n" for row in rows))


def test_metadata_problems_are_named_with_their_line(small_real_folder):
    root = small_real_folder
    lines = (root / "metadata.csv").read_text().splitlines()
    cars = sorted({p.name[:12] for p in (root / "train").glob("*.jpg")})
    first, second = (next(line for line in lines if car in line) for car in cars)
    make = first.split(",")[2].strip('"')
    renamed = first.replace(first.split(",")[2], '"Make Two"')
    write_metadata(root, lines[0], first, renamed, second + ',"one too many"')
    index = index_dataset(root, check_pixels=False)
    found = {(p.kind, p.fatal): p.message for p in index.problems if p.kind != "missing-metadata"}
    assert found == {
        ("conflicting-metadata", False): f"line 3: car {cars[0]} is also on line 2 with other "
                                         f"values (make {make!r} vs 'Make Two'); line 2 is used",
        ("bad-row", False): f"line 4 (car {cars[1]}) has 7 fields, the header has 6: row skipped",
    }
    assert not [p for p in index.problems if cars[1] in p.message and p.kind != "bad-row"]
    assert {r.make for r in index.train if r.car_id == cars[0]} == {make}  # the first row wins

    write_metadata(root)  # empty
    result = carmask("data", "index", "--data", str(root))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: {root / 'metadata.csv'}: metadata.csv is empty" in result.stdout


def test_deep_check_decodes_photos(small_real_folder):
    photo = sorted((small_real_folder / "train").glob("*.jpg"))[3]
    data = bytearray(photo.read_bytes())
    data[400:900] = b"\x13" * 500  # garbage in the coding tables: the header still parses
    photo.unlink()
    photo.write_bytes(bytes(data))
    assert index_dataset(small_real_folder).problems == []
    index = index_dataset(small_real_folder, deep=True)
    assert [(p.kind, p.path) for p in index.problems] == [("unreadable", photo)]


def test_deep_check_finds_data_cut_short_and_every_check_says_what_a_file_is(small_real_folder):
    """A JPEG cut in half with its end marker put back passes the end check, but not --deep; a
    PNG named .jpg is a photo like any other; empty, text and bomb files are named as such."""
    from conftest import bomb_png
    train, test = small_real_folder / "train", small_real_folder / "test"
    photos = sorted(train.glob("*.jpg"))
    data = photos[2].read_bytes()
    photos[2].unlink()
    photos[2].write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    png = photos[5]
    photos[5].unlink()
    Image.open(photos[6]).save(png, format="PNG")
    tests = sorted(test.glob("*.jpg"))
    for path, content in zip(tests, (b"", b"a note, not a photo\n")):
        path.unlink()
        path.write_bytes(content)
    bomb = test / f"{BAD}_03.jpg"
    bomb.write_bytes(bomb_png())
    unreadable = {tests[0]: "empty file (0 bytes)", tests[1]: "not an image (it looks like text",
                  bomb: "30000x30000 is 900.0 megapixels"}
    for deep in (False, True):
        problems = {p.path: p for p in index_dataset(small_real_folder, deep=deep).problems
                    if p.kind != "missing-metadata"}
        for path, what in unreadable.items():
            problem = problems.pop(path)
            assert problem.kind == "unreadable" and what in problem.message, problem
        if deep:
            cut = problems.pop(photos[2])
            assert cut.kind == "truncated" and "premature end" in cut.message
        assert not problems, problems  # the PNG named .jpg is fine


def test_read_mask_errors_name_the_file(tmp_path):
    path = tmp_path / "x_mask.png"
    Image.fromarray(np.array([[0, 7]], np.uint8)).save(path)
    with pytest.raises(DataError, match=r"x_mask.png: mask is not binary: values \{0, 7\}"):
        read_mask(path)
    with pytest.raises(DataError, match="no such file"):
        read_mask(tmp_path / "missing.gif")
