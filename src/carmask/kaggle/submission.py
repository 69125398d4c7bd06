"""Kaggle submissions, the reading side: the format, a strict checker and a shard merger.

HEADER and SubmissionError live here, with the rules for reading a submission, so that the
writer (`carmask.kaggle.writer`) can import them without this module importing the writer.

Reading (the checker, the merger, sample files) follows the csv module, as Kaggle's reader does:
quoted fields and blank lines at the end are fine. Files are read a line at a time, so a 3 GB
submission is never held in memory.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

from carmask.kaggle import rle
from carmask.util.atomic import atomic_path

HEADER = "img,rle_mask"


class SubmissionError(RuntimeError):
    """A submission that cannot be written or is incomplete."""


class Row(NamedTuple):
    """One line of a CSV file: `fields` is [] for a blank line; `problem` says why a line that
    is not a CSV row (an unclosed quote, say) has no fields."""

    number: int  # 1-based line number
    offset: int  # byte offset of the line in the file
    length: int  # bytes, line ending included
    fields: list[str]
    problem: str | None = None


def read_rows(file: BinaryIO, path: str | Path) -> Iterator[Row]:
    """Every line of a CSV opened in binary mode, parsed with the csv module's rules.

    A line that is not UTF-8 raises SubmissionError naming the file, line and byte: nothing
    after it can be trusted to be the file the user meant to give.
    """
    offset = 0
    for number, raw in enumerate(file, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SubmissionError(
                f"{path}:{number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
                f"{error.start + 1}); is this really a CSV file?") from None
        if number == 1:
            text = text.removeprefix("\ufeff")  # a byte-order mark from Excel
        fields, problem = split_row(text.rstrip("\r\n"))
        yield Row(number, offset, len(raw), fields, problem)
        offset += len(raw)


def split_row(text: str) -> tuple[list[str], str | None]:
    """A CSV line's fields (quotes as the csv module reads them), or why it is not a row."""
    if not text.strip():
        return [], None
    if '"' not in text:  # the common case, and exactly what csv.reader would return
        return text.split(","), None
    # An RLE can exceed the csv module's default 128 KB field limit; raising it is harmless.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    try:
        return next(csv.reader([text], strict=True)), None
    except csv.Error as error:
        return [], f"not a CSV row ({error}): {text[:60]!r}"


def name_problem(name: str) -> str | None:
    """Why a photo name cannot be a submission row's `img` (None when it can): a line break (a
    CSV row is one line here), or bytes that are not UTF-8 (a CSV is UTF-8 text). Commas and
    quotes are fine: `csv_row` quotes the name as Kaggle's reader expects."""
    if "\n" in name or "\r" in name:
        return "a line break in the name"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not UTF-8 (rename the file)"
    return None


def csv_row(name: str, encoding: str) -> bytes:
    """One submission row, UTF-8, the name quoted as the csv module (and Kaggle) read it when it
    holds a comma or a quote. `name_problem` must have passed."""
    if "," in name or '"' in name:
        name = '"' + name.replace('"', '""') + '"'
    return f"{name},{encoding}\n".encode("utf-8")


def read_sample_names(path: str | Path) -> list[str]:
    """Image names of a `sample_submission.csv` (or any `img,...` CSV), in file order."""
    path = Path(path)
    names: list[str] = []
    first_seen: dict[str, int] = {}
    with open(path, "rb") as file:
        for row in read_rows(file, path):
            if row.problem:
                raise SubmissionError(f"{path}:{row.number}: {row.problem}")
            if row.number == 1:
                if not row.fields or row.fields[0] != "img":
                    raise SubmissionError(f"{path}: header is {','.join(row.fields)!r}, "
                                          "expected it to start with 'img,'")
            elif row.fields:
                if not row.fields[0]:
                    raise SubmissionError(f"{path}:{row.number}: no image name")
                if row.fields[0] in first_seen:  # one row per image is the format's rule
                    raise SubmissionError(f"{path}:{row.number}: {row.fields[0]} is listed twice "
                                          f"(first on line {first_seen[row.fields[0]]})")
                first_seen[row.fields[0]] = row.number
                names.append(row.fields[0])
    if not names:
        raise SubmissionError(f"{path}: no image names after the header")
    return names


# -- checking ---------------------------------------------------------------------------------
@dataclass
class CheckReport:
    path: Path
    rows: int = 0
    empty_masks: int = 0
    errors: list[tuple[int | None, str]] = field(default_factory=list)  # (line number, message)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_submission(
    path: str | Path,
    expected: Sequence[str] | None = None,
    shape: tuple[int, int] = rle.CARVANA_SHAPE,
    max_errors: int = 1000,
) -> CheckReport:
    """Validate a submission: header, every expected image exactly once, no extras, valid RLEs.

    `expected` is the list of image names (usually `read_sample_names(sample)`); without it only
    the rows themselves are checked. Problems are collected with their line numbers; a file that
    is not UTF-8 text raises SubmissionError instead (there are no rows to speak of).
    """
    path = Path(path)
    report = CheckReport(path)

    def error(line: int | None, message: str) -> None:
        if len(report.errors) < max_errors:
            report.errors.append((line, message))

    if not path.is_file():
        error(None, "file does not exist")
        return report
    expected_set = set(expected) if expected is not None else None
    seen: dict[str, int] = {}
    blanks: list[int] = []  # blank lines so far: fine at the end of the file, not before a row
    lines = 0
    with open(path, "rb") as file:
        for row in read_rows(file, path):
            lines = row.number
            if row.number == 1:
                if row.problem:
                    error(1, f"header: {row.problem}")
                elif row.fields != HEADER.split(","):
                    error(1, f"header is {','.join(row.fields)[:60]!r}, expected {HEADER!r}")
                continue
            if not row.fields and not row.problem:
                blanks.append(row.number)
                continue
            for number in blanks:
                error(number, "blank line")
            blanks.clear()
            if row.problem:
                error(row.number, row.problem)
                continue
            if len(row.fields) != 2:
                error(row.number, f"expected 'img,rle_mask', got {len(row.fields)} field(s): "
                                  f"{','.join(row.fields)[:60]!r}")
                continue
            name, encoding = row.fields
            report.rows += 1
            if name in seen:
                error(row.number, f"{name}: duplicate row (first on line {seen[name]})")
                continue
            seen[name] = row.number
            if expected_set is not None and name not in expected_set:
                error(row.number, f"{name}: not an image of the sample submission")
                continue
            if problem := rle.validate(encoding, shape):
                error(row.number, f"{name}: invalid RLE: {problem}")
            elif not encoding:
                report.empty_masks += 1
    if not lines:
        error(1, f"the file is empty: expected the header {HEADER!r} and a row per image")
    if expected is not None:
        missing = [name for name in expected if name not in seen]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            error(None, f"{len(missing)} expected images have no row: {shown}")
        elif [n for n in seen] != list(expected):
            report.warnings.append("rows are not in sample_submission order (Kaggle accepts this)")
    if report.empty_masks:
        report.warnings.append(f"{report.empty_masks} rows have an empty mask")
    return report


def merge_submissions(shards: Sequence[str | Path], out: str | Path,
                      expected: Sequence[str]) -> list[str]:
    """Join shard CSVs (from `predict --shard i/n`) into one submission in `expected` order.

    Shards are read as `check_submission` reads a file (quoted fields, blank lines at the end);
    rows are located by offset and re-read when written, so memory stays small whatever the
    file sizes. Returns the expected names without a mask in any shard (their rows are left
    empty); a name found in two shards, one not expected, or a malformed row is an error.
    """
    out = Path(out)
    expected_set = set(expected)
    where: dict[str, tuple[int, int, int]] = {}  # name -> (shard, offset, length)
    empty: set[str] = set()
    for number, shard in enumerate(map(Path, shards)):
        with open(shard, "rb") as file:
            for row in read_rows(file, shard):
                if row.problem:
                    raise SubmissionError(f"{shard}:{row.number}: {row.problem}")
                if row.number == 1:
                    if row.fields != HEADER.split(","):
                        raise SubmissionError(f"{shard}: header is {','.join(row.fields)[:40]!r}, "
                                              f"expected {HEADER!r}")
                    continue
                if not row.fields:
                    continue  # a blank line: Kaggle's reader skips it, and so does the check
                if len(row.fields) != 2:
                    raise SubmissionError(f"{shard}:{row.number}: expected 'img,rle_mask', got "
                                          f"{len(row.fields)} field(s)")
                name, encoding = row.fields
                if name not in expected_set:
                    raise SubmissionError(f"{shard}:{row.number}: {name} is not an image of the "
                                          "sample")
                if name in where:
                    raise SubmissionError(f"{shard}:{row.number}: {name} is also in "
                                          f"{shards[where[name][0]]}")
                where[name] = (number, row.offset, row.length)
                if not encoding:
                    empty.add(name)
    missing = [name for name in expected if name not in where or name in empty]
    files = [open(shard, "rb") for shard in shards]
    try:
        with atomic_path(out) as tmp, open(tmp, "wb") as target:
            target.write(f"{HEADER}\n".encode())
            for name in expected:
                if name not in where:
                    target.write(csv_row(name, ""))
                    continue
                number, offset, length = where[name]
                files[number].seek(offset)
                # Re-parsed and written plainly: a quoted shard row becomes an unquoted one.
                _, encoding = split_row(files[number].read(length).decode("utf-8").rstrip("\r\n"))[0]
                target.write(csv_row(name, encoding))
    finally:
        for file in files:
            file.close()
    return missing
