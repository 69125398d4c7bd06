"""Discover a Kaggle Carvana folder, join its metadata and collect every problem in it.

Problems are gathered, not raised one at a time, so a user fixing a data folder sees the whole
list in one run. Pixel checks run in a thread pool: Pillow and OpenCV release the GIL while they
decode.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from carmask.data.io import (
    PhotoError,
    binary_problem,
    read_photo,
    read_photo_header,
    truncation_problem,
)
from carmask.data.path_problems import folder_problem, not_a_file
from carmask.util.progress import Track, silent_track

log = logging.getLogger(__name__)

CAR_ID = re.compile(r"[0-9a-f]{12}")  # Kaggle's car ids: 12 lowercase hex digits
NAME_PATTERN = re.compile(rf"^(?P<car>{CAR_ID.pattern})_(?P<view>0[1-9]|1[0-6])$")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = "_mask.gif"
CARVANA_SIZE = (1918, 1280)  # (width, height)
METADATA_COLUMNS = ("year", "make", "model", "trim1", "trim2")


@dataclass(frozen=True)
class Record:
    """One photo of one car, with its mask when it has one."""

    image_id: str  # "<car>_<NN>"
    car_id: str
    view: int  # 1..16
    image_path: Path
    mask_path: Path | None
    subset: str  # "train" or "test"
    make: str = ""
    model: str = ""
    year: int | None = None

    @property
    def image_name(self) -> str:
        """The name Kaggle's CSVs use, e.g. 00087a6bd4dc_01.jpg."""
        return self.image_path.name


@dataclass(frozen=True)
class Problem:
    path: Path
    kind: str
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        level = "error" if self.fatal else "warning"
        return f"{level}: {self.path}: {self.message} [{self.kind}]"


@dataclass
class DataIndex:
    root: Path
    train: list[Record]
    test: list[Record]
    problems: list[Problem]
    metadata: pd.DataFrame | None
    image_sizes: Counter = field(default_factory=Counter)  # (w, h) -> count
    coverage: dict[str, float] = field(default_factory=dict)  # image_id -> car fraction

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def records(self) -> list[Record]:
        return self.train + self.test

    def summary(self) -> dict:
        cars = {r.car_id for r in self.train}
        years = sorted({r.year for r in self.train if r.year is not None})
        return {
            "root": str(self.root),
            "train_cars": len(cars),
            "train_images": len(self.train),
            "masks": sum(r.mask_path is not None for r in self.train),
            "test_cars": len({r.car_id for r in self.test}),
            "test_images": len(self.test),
            "makes": len({r.make for r in self.train if r.make}),
            "years": f"{years[0]}-{years[-1]}" if years else "",
            "image_sizes": {f"{w}x{h}": n for (w, h), n in self.image_sizes.most_common()},
            "problems": len(self.problems),
            "fatal_problems": len(self.fatal),
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per image: ids, subset, view, metadata, paths and mask coverage."""
        rows = [
            {
                "image_id": r.image_id, "car_id": r.car_id, "view": r.view, "subset": r.subset,
                "make": r.make, "model": r.model, "year": r.year,
                "image_path": str(r.image_path),
                "mask_path": str(r.mask_path) if r.mask_path else "",
                "coverage": self.coverage.get(r.image_id, np.nan),
            }
            for r in self.records
        ]
        return pd.DataFrame(rows)


def index_dataset(
    root: str | Path,
    *,
    check_pixels: bool = True,
    deep: bool = False,
    expected_size: tuple[int, int] | None = None,
    workers: int | None = None,
    track: Track = silent_track,
) -> DataIndex:
    """Index a Kaggle-layout folder (train/, train_masks/, test/, metadata.csv).

    Every photo's header is read and its end checked for the end-of-image marker, which finds
    truncated files. With `check_pixels` every mask is decoded (binary? one frame? its image's
    size?); with `deep` every photo is decoded too (at 1/8 scale: libjpeg still reads all of the
    compressed data), which also finds broken coding tables that the header parse misses.
    `expected_size` (width, height) defaults to the most common photo size.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: {folder_problem(root, 'data folder')}")
    problems: list[Problem] = []
    metadata, reported_cars = _read_metadata(root / "metadata.csv", problems)

    # ids whose photo or mask is there but unusable (a broken link, a folder): already reported,
    # so "no mask" or "no image" for them would mislead
    unusable: set[str] = set()
    train_images = _scan_images(root / "train", problems, unusable)
    test_images = _scan_images(root / "test", problems, unusable)
    masks = _scan_masks(root / "train_masks", problems, unusable)
    if not train_images and not test_images:
        problems.append(Problem(root, "no-images", "no images in train/ or test/"))

    for image_id in sorted(train_images.keys() & test_images.keys()):
        problems.append(Problem(test_images[image_id], "duplicate-id",
                                f"{image_id} is both a train and a test image"))
    for image_id in sorted(train_images.keys() - masks.keys() - unusable):
        problems.append(Problem(train_images[image_id], "missing-mask",
                                f"no mask train_masks/{image_id}{MASK_SUFFIX}"))
    for image_id in sorted(masks.keys() - train_images.keys() - unusable):
        problems.append(Problem(masks[image_id], "orphan-mask",
                                f"no image train/{image_id}.jpg for this mask"))

    def make_records(images: dict[str, Path], subset: str) -> list[Record]:
        records = []
        for image_id, path in sorted(images.items()):
            car, view = image_id.rsplit("_", 1)
            meta = metadata.get(car, {}) if metadata is not None else {}
            records.append(Record(
                image_id=image_id, car_id=car, view=int(view), image_path=path,
                mask_path=masks.get(image_id) if subset == "train" else None, subset=subset,
                make=meta.get("make", ""), model=meta.get("model", ""), year=meta.get("year"),
            ))
        return records

    index = DataIndex(root, make_records(train_images, "train"), make_records(test_images, "test"),
                      problems, pd.DataFrame.from_dict(metadata, orient="index") if metadata else None)
    if metadata is not None:
        missing = sorted({r.car_id for r in index.records} - metadata.keys() - reported_cars)
        for car in missing:
            problems.append(Problem(root / "metadata.csv", "missing-metadata",
                                    f"car {car} has no row", fatal=False))
    _check_files(index, check_pixels, deep, expected_size, workers, track)
    index.problems.sort(key=lambda p: (not p.fatal, str(p.path), p.kind))
    return index


def _read_metadata(path: Path, problems: list[Problem]) -> tuple[dict[str, dict] | None, set[str]]:
    """Rows of metadata.csv by car id, and the cars whose rows were reported as bad.

    Read with the csv module, a row at a time, so a bad row is named by its line and the rest of
    the file still counts; a car listed twice keeps its first row.
    """
    if not path.is_file():
        if os.path.lexists(path):  # a broken link, or a folder: "not found" would mislead
            problems.append(Problem(path, _kind_of(path, "not-a-file"), f"{not_a_file(path, 'CSV file')}: "
                                    "makes and years will be unknown", fatal=False))
        else:
            problems.append(Problem(path, "missing-file", "metadata.csv not found: makes and "
                                    "years will be unknown", fatal=False))
        return None, set()
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            lines = [(number, row) for number, row in _csv_rows(file) if row]
    except (UnicodeDecodeError, csv.Error, OSError) as error:
        reason = "not UTF-8 text" if isinstance(error, UnicodeDecodeError) else str(error)
        problems.append(Problem(path, "unreadable", f"cannot read metadata.csv: {reason}"))
        return None, set()
    if not lines:
        problems.append(Problem(path, "unreadable", "metadata.csv is empty: expected the header "
                                f"id,{','.join(METADATA_COLUMNS)} and a row per car"))
        return None, set()
    header = [name.strip() for name in lines[0][1]]
    missing = {"id", *METADATA_COLUMNS} - set(header)
    if missing:
        problems.append(Problem(path, "bad-columns", f"missing columns: {', '.join(sorted(missing))}"))
        return None, set()
    column = {name: header.index(name) for name in ("id", *METADATA_COLUMNS)}
    rows: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    reported: set[str] = set()  # cars with a bad row: "has no row" would mislead for them

    def warn(kind: str, message: str) -> None:
        problems.append(Problem(path, kind, message, fatal=False))

    for number, fields in lines[1:]:
        car = fields[column["id"]].strip() if len(fields) > column["id"] else ""
        if len(fields) != len(header):
            warn("bad-row", f"line {number} (car {car or '?'}) has {len(fields)} fields, the "
                            f"header has {len(header)}: row skipped")
            reported.add(car)
            continue
        values = {name: fields[at] for name, at in column.items() if name != "id"}
        year = values["year"].strip()
        values["year"] = int(float(year)) if year.replace(".", "", 1).isdigit() else None
        if car in rows:
            if rows[car] != values:
                changed = ", ".join(f"{key} {rows[car][key]!r} vs {values[key]!r}"
                                    for key in values if values[key] != rows[car][key])
                warn("conflicting-metadata", f"line {number}: car {car} is also on line "
                                             f"{first_line[car]} with other values ({changed}); "
                                             f"line {first_line[car]} is used")
            else:
                warn("duplicate-metadata", f"line {number}: car {car} repeats line {first_line[car]}")
            continue
        rows[car], first_line[car] = values, number
    return rows, reported


def _csv_rows(file) -> Iterator[tuple[int, list[str]]]:
    """(line number where the row starts, fields) for each row of an open CSV file."""
    reader = csv.reader(file)
    start = 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1


def _entries(folder: Path, problems: list[Problem]) -> list[os.DirEntry]:
    """A folder's entries sorted by name; none when it is absent or cannot be listed. A link
    that leads to no folder, or a file in the folder's place, is a problem naming it: its
    photos would otherwise vanish without a word."""
    if not folder.is_dir():
        if os.path.lexists(folder):
            problems.append(Problem(folder, _kind_of(folder, "not-a-folder"),
                                    f"{folder_problem(folder, 'folder')}: its files cannot be read"))
        return []
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as error:
        problems.append(Problem(folder, "unreadable", f"cannot list the folder: {error.strerror}"))
        return []


def _is_file(entry: os.DirEntry, problems: list[Problem], what: str | None) -> bool:
    """Whether `entry` is a file or a link to one. When `what` (photo, mask) names what its
    name says it is, anything else is a problem that says what it is instead: a link to
    nowhere, a loop of links, a folder or a link to one."""
    try:
        if entry.is_file():
            return True
    except OSError:  # a link it cannot follow: described below
        pass
    if what:
        path = Path(entry.path)
        problems.append(Problem(path, _kind_of(path, "not-a-file"), not_a_file(path, what)))
    return False


def _kind_of(path: Path, otherwise: str) -> str:
    """broken-link for a symbolic link that leads nowhere (missing, a loop), else `otherwise`."""
    return "broken-link" if path.is_symlink() and not path.exists() else otherwise


def _scan_images(folder: Path, problems: list[Problem], unusable: set[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in _entries(folder, problems):
        path = Path(entry.path)
        stem, suffix = os.path.splitext(entry.name)
        if suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not _is_file(entry, problems, "photo"):
            unusable.add(stem)
            continue
        if not NAME_PATTERN.match(stem):
            problems.append(Problem(path, "bad-name",
                                    "name does not match <12 hex>_<NN> with NN in 01..16"))
        elif stem in found:
            problems.append(Problem(path, "duplicate-id",
                                    f"{stem} also exists as {found[stem].name}"))
        else:
            found[stem] = path
    return found


def _scan_masks(folder: Path, problems: list[Problem], unusable: set[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in _entries(folder, problems):
        is_mask = entry.name.lower().endswith((".gif", ".png"))
        if not _is_file(entry, problems, "mask" if is_mask else None):
            if entry.name.endswith(MASK_SUFFIX):
                unusable.add(entry.name[: -len(MASK_SUFFIX)])
            continue
        path = Path(entry.path)
        if not entry.name.endswith(MASK_SUFFIX):
            if is_mask:
                problems.append(Problem(path, "bad-name", f"mask names end in {MASK_SUFFIX}"))
            continue
        stem = entry.name[: -len(MASK_SUFFIX)]
        if not NAME_PATTERN.match(stem):
            problems.append(Problem(path, "bad-name",
                                    "name does not match <12 hex>_<NN>_mask.gif with NN in 01..16"))
        else:
            found[stem] = path
    return found


def _check_files(index: DataIndex, check_pixels: bool, deep: bool, expected_size: tuple[int, int] | None,
                 workers: int | None, track: Track) -> None:
    records = index.records
    jobs = [(r.image_path, r.mask_path) for r in records]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = list(track(pool.map(lambda job: _check_pair(*job, check_pixels, deep), jobs),
                             total=len(jobs), description="checking files"))
    sizes = Counter(result.image_size for result in results if result.image_size)
    index.image_sizes = sizes
    expected = expected_size or (sizes.most_common(1)[0][0] if sizes else CARVANA_SIZE)
    for record, result in zip(records, results):
        index.problems.extend(result.problems)
        if result.image_size and result.image_size != expected:
            w, h = result.image_size
            index.problems.append(Problem(record.image_path, "wrong-size",
                                          f"image is {w}x{h}, expected {expected[0]}x{expected[1]}"))
        if result.coverage is not None:
            index.coverage[record.image_id] = result.coverage


@dataclass
class _PairCheck:
    image_size: tuple[int, int] | None = None
    coverage: float | None = None
    problems: list[Problem] = field(default_factory=list)


def _check_pair(image_path: Path, mask_path: Path | None, check_pixels: bool,
                deep: bool) -> _PairCheck:
    result = _PairCheck()
    try:
        # deep: decoded as predict reads it (at 1/8 scale: libjpeg still reads every byte), so
        # data that stops early or is corrupt is found even with an end marker in place
        photo = read_photo(image_path, reduce=8) if deep else read_photo_header(image_path)
        result.image_size = (photo.size[1], photo.size[0])
        if problem := truncation_problem(image_path):
            result.problems.append(Problem(image_path, "truncated", problem))
    except PhotoError as error:
        kind = "truncated" if error.kind == "truncated" else "unreadable"
        result.problems.append(Problem(image_path, kind, error.problem))
    except OSError as error:
        result.problems.append(Problem(image_path, "unreadable", f"cannot read ({error})"))
    if mask_path is None:
        return result
    try:
        with Image.open(mask_path) as mask:
            frames = getattr(mask, "n_frames", 1)
            if frames != 1:
                result.problems.append(Problem(mask_path, "multi-frame",
                                               f"mask has {frames} frames, expected 1"))
            if result.image_size and mask.size != result.image_size:
                result.problems.append(Problem(
                    mask_path, "size-mismatch",
                    f"mask is {mask.size[0]}x{mask.size[1]} but its image is "
                    f"{result.image_size[0]}x{result.image_size[1]}"))
            if check_pixels:
                values = np.asarray(mask if mask.mode in ("P", "L", "1") else mask.convert("L"))
                if problem := binary_problem(values):
                    result.problems.append(Problem(mask_path, "not-binary", problem))
                else:
                    result.coverage = float(np.count_nonzero(values)) / values.size
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        kind = "truncated" if "truncated" in str(error) else "unreadable"
        result.problems.append(Problem(mask_path, kind, f"cannot decode mask ({error})"))
    return result

