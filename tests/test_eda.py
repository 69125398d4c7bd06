"""The data report (carmask.apps.eda) on small real-data folders, and the HTML helpers it uses.

The real-data tests symlink a few cars of ../shared/data/carvana (the `carvana` fixture of
conftest.py, which skips with a reason when the data is absent) into a temporary Kaggle layout.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carmask.data import index_dataset
from carmask.apps.eda import SECTIONS, write_eda_report
from carmask.apps.report import (Raw, figure_to_data_uri, image_to_data_uri, overlay, page, table_html,
                            write_html)

DATA_URI = re.compile(r'src="data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)"')
HEADINGS = ["Overview", "Makes, models and years", "Mask coverage", "Mean mask of each view",
            "Sample images with their masks", "Input image and true mask",
            "Image sizes and data problems", "Per-car table"]


def _cars(real: Path, count: int) -> list[str]:
    return sorted({p.name.split("_")[0] for p in (real / "train").glob("*.jpg")})[:count]


def _link_cars(real: Path, root: Path, cars: list[str]) -> None:
    """Symlink (never copy) every photo and mask of `cars` into a Kaggle layout under `root`."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "train_masks").mkdir(exist_ok=True)
    for car in cars:
        for image in sorted((real / "train").glob(f"{car}_*.jpg")):
            (root / "train" / image.name).symlink_to(image)
            mask = f"{image.stem}_mask.gif"
            (root / "train_masks" / mask).symlink_to(real / "train_masks" / mask)


def _write_metadata(real: Path, root: Path, cars: list[str]) -> dict[str, dict]:
    """metadata.csv with the real rows of `cars` only."""
    with open(real / "metadata.csv", newline="") as file:
        rows = {row["id"]: row for row in csv.DictReader(file) if row["id"] in set(cars)}
    with open(root / "metadata.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, ["id", "year", "make", "model", "trim1", "trim2"],
                                quoting=csv.QUOTE_ALL)
        writer.writeheader()
        writer.writerows(rows[car] for car in cars)
    return rows


def _coverage(mask_path: Path) -> float:
    values = np.asarray(Image.open(mask_path))
    return float(np.count_nonzero(values)) / values.size


def _card(text: str, label: str) -> str:
    found = re.search(rf'<div class="k">{re.escape(label)}</div><div class="v">([^<]*)</div>', text)
    assert found, f"no overview card {label!r}"
    return html.unescape(found.group(1))


@pytest.fixture(scope="module")
def real3(carvana, tmp_path_factory):
    """3 real cars (48 photos + masks), 2 real test photos and metadata rows for their cars."""
    root = tmp_path_factory.mktemp("real3")
    cars = _cars(carvana, 3)
    _link_cars(carvana, root, cars)
    (root / "test").mkdir()
    tests = sorted((carvana / "test").glob("*.jpg"))[:2]
    for photo in tests:
        (root / "test" / photo.name).symlink_to(photo)
    meta = _write_metadata(carvana, root, cars + sorted({p.name.split("_")[0] for p in tests}))
    out = tmp_path_factory.mktemp("report3") / "nested" / "eda"
    path = write_eda_report(root, out, samples=8, seed=0)
    return {"root": root, "cars": cars, "meta": meta, "path": path, "html": path.read_text("utf-8")}


def test_report_is_one_self_contained_file_with_every_section(real3):
    path, text = real3["path"], real3["html"]
    assert path.name == "index.html" and path.is_file()
    assert not list(path.parent.glob("*.tmp")) and not list(path.parent.glob(".*.tmp"))
    assert 'src="http' not in text and "<link" not in text and "<script src" not in text
    assert "url(http" not in text and "@import" not in text
    for heading in HEADINGS + list(SECTIONS.values()):
        assert f"<h2>{html.escape(heading)}</h2>" in text, heading
    images = DATA_URI.findall(text)
    assert len(images) >= 8 + 3 * 2  # samples, then the pairs' photo and mask, then the figures
    for fmt, data in images:  # every embedded picture is a real, decodable image
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == fmt.upper() and min(image.size) > 10
    assert len(re.findall(r'<figure class="sample"', text)) == 8
    assert path.stat().st_size < 3_000_000


def test_report_states_counts_and_makes(real3):
    text, meta, cars = real3["html"], real3["meta"], real3["cars"]
    assert _card(text, "Cars") == "3"
    assert _card(text, "Train images") == "48"
    assert _card(text, "Masks") == "48"
    assert _card(text, "Test images") == "2"
    assert _card(text, "Image sizes") == "1918×1280"
    makes = {meta[car]["make"] for car in cars}
    assert _card(text, "Makes") == str(len(makes))
    for car in cars:
        assert html.escape(meta[car]["make"]) in text and car in text
        assert html.escape(meta[car]["model"]) in text
    assert "No problems found" in text


def test_coverage_in_the_page_matches_numpy(real3):
    text, root = real3["html"], real3["root"]
    shown = re.findall(r'data-image-id="([0-9a-f]{12}_\d\d)" data-coverage="([0-9.]+)"', text)
    assert len(shown) == 8
    assert len({image_id.split("_")[0] for image_id, _ in shown}) == 3  # spread over every car
    assert len({image_id for image_id, _ in shown}) == 8
    for image_id, value in shown:
        truth = _coverage(root / "train_masks" / f"{image_id}_mask.gif")
        assert float(value) == pytest.approx(truth, abs=1e-6)
    # the per-car table's mean coverage of the first car, computed independently over its 16 masks
    car = real3["cars"][0]
    mean = np.mean([_coverage(p) for p in sorted((root / "train_masks").glob(f"{car}_*_mask.gif"))])
    row = re.search(rf"<tr><td>{car}</td>.*?</tr>", text)
    assert row and f"{mean:.2%}" in row.group(0)
    overall = np.mean([_coverage(p) for p in (root / "train_masks").glob("*.gif")])
    assert _card(text, "Car pixels") == f"{overall:.1%}"


def test_planted_problems_and_missing_metadata_are_shown(carvana, tmp_path):
    root = tmp_path / "data"
    car = _cars(carvana, 1)[0]
    _link_cars(carvana, root, [car])
    stray = root / "train" / "ffffffffffff_01.jpg"  # a photo with no mask, and no metadata.csv at all
    stray.symlink_to(carvana / "train" / f"{car}_01.jpg")
    path = write_eda_report(root, tmp_path / "out", samples=4)
    text = path.read_text("utf-8")
    problems = text[text.index("<h3>Data problems</h3>"):]
    assert "train/ffffffffffff_01.jpg" in problems and "missing-mask" in problems
    assert "metadata.csv" in problems and 'class="badge warning"' in problems
    assert 'class="badge error"' in problems
    assert _card(text, "Makes") == "unknown" and _card(text, "Test images") == "0"
    assert _card(text, "Cars") == "2" and _card(text, "Masks") == "16"
    assert "No model years known" in text
    assert len(re.findall(r'<figure class="sample"', text)) == 4


def test_accepts_an_index_without_coverage_and_leaves_it_alone(carvana, tmp_path):
    root = tmp_path / "data"
    cars = _cars(carvana, 1)
    _link_cars(carvana, root, cars)
    _write_metadata(carvana, root, cars)
    index = index_dataset(root, check_pixels=False)
    assert not index.coverage
    first = write_eda_report(index, tmp_path / "a", samples=5, seed=3).read_text("utf-8")
    assert not index.coverage  # computed for the page, not written into the caller's index
    shown = re.findall(r'data-image-id="([^"]+)" data-coverage="([0-9.]+)"', first)
    image_id, value = shown[0]
    assert float(value) == pytest.approx(_coverage(root / "train_masks" / f"{image_id}_mask.gif"), abs=1e-6)
    again = write_eda_report(index, tmp_path / "b", samples=5, seed=3).read_text("utf-8")
    other = write_eda_report(index, tmp_path / "c", samples=5, seed=4).read_text("utf-8")
    ids = lambda text: re.findall(r'data-image-id="([^"]+)"', text)  # noqa: E731
    assert ids(first) == ids(again) and ids(first) != ids(other)


def test_folder_with_only_test_photos(carvana, tmp_path):
    root = tmp_path / "data"
    (root / "test").mkdir(parents=True)
    for photo in sorted((carvana / "test").glob("*.jpg"))[:2]:
        (root / "test" / photo.name).symlink_to(photo)
    text = write_eda_report(root, tmp_path / "out").read_text("utf-8")
    assert _card(text, "Cars") == "0" and _card(text, "Test images") == "2"
    assert "No training images with masks" in text
    for heading in HEADINGS:
        assert f"<h2>{html.escape(heading)}</h2>" in text


# --------------------------------------------------------------------------- carmask.apps.report

def test_table_escapes_cells_and_formats_numbers():
    out = table_html([{"name": "<script>x</script>", "share": 0.25, "raw": Raw("<b>ok</b>")}],
                     formats={"share": ".1%"})
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert '<td class="num">25.0%</td>' in out and "<b>ok</b>" in out
    rows = table_html([(1, "a"), (2, "b"), (3, "c")], ["n", "s"], max_rows=2)
    assert rows.count("<tr>") == 4 and "1 more rows" in rows
    assert "<th>s</th>" in rows and '<th class="num">n</th>' in rows


def test_overlay_tints_the_mask_and_draws_its_outline():
    image = np.full((60, 80, 3), 200, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[20:40, 30:50] = True
    out = overlay(image, mask, color=(255, 0, 0), alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8 and image[0, 0, 0] == 200  # a copy
    assert tuple(out[30, 40]) == (227, 100, 100)  # inside: half-way to the colour
    assert tuple(out[5, 5]) == (200, 200, 200)  # far outside: untouched
    assert out[20, 40, 0] == 255 and out[20, 40, 1] < 100  # on the edge: the outline
    small = overlay(image, mask[::2, ::2].astype(np.float32))  # resized to the image
    assert small.shape == image.shape and small[30, 40, 1] < 200


def test_images_and_figures_become_data_uris():
    uri = image_to_data_uri(np.zeros((100, 300, 3), np.uint8), "jpeg", max_width=150)
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        assert uri.startswith("data:image/jpeg;base64,") and image.size == (150, 50)
    assert image_to_data_uri(np.eye(8, dtype=bool), "png").startswith("data:image/png;base64,")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    uri = figure_to_data_uri(fig)
    assert uri.startswith("data:image/png;base64,") and fig.number not in plt.get_fignums()


def test_write_html_replaces_the_file_atomically(tmp_path):
    target = tmp_path / "deep" / "index.html"
    write_html(target, page("First", "<p>one</p>", subtitle="a <b> c"))
    write_html(target, page("Second", "<p>two</p>"))
    text = target.read_text("utf-8")
    assert "<title>Second</title>" in text and "<p>one</p>" not in text
    assert sorted(p.name for p in target.parent.iterdir()) == ["index.html"]
    assert "a &lt;b&gt; c" in page("t", "", subtitle="a <b> c")
