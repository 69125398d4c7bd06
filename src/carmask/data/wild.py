"""Car photos from outside the studio (`cars_in_the_wild`: images/, masks/, index.csv, and
people/ for the street frames) and their honest split into training and validation.

The street frames are every third frame of a few dashboard videos, so neighbouring frames are
near copies: a random split would validate on photos the model has all but seen. The split is by
video instead. The Roboflow export's own split is not used for them because it shares videos
between its train, valid and test folders; for the product photos, each a different car, it is.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from carmask.data.io import DataError, PhotoError, read_photo_header
from carmask.data.layout import Record

# The street video held out whole: 57 frames of a sequence no training frame comes from.
VALIDATION_VIDEOS = ("Seq05VD",)
COLUMNS = ("name", "kind", "source_path")


@dataclass(frozen=True)
class WildPhoto:
    name: str
    kind: str  # "web" (product/stock photo) or "camvid" (street frame)
    image_path: Path
    mask_path: Path
    source_split: str  # the export's train/valid/test folder
    # people/NAME.png where the folder has one (street frames): 255 = a person on foot or on a
    # bicycle. Not car: negatives for training, and a count of people taken for car.
    people_path: Path | None = None

    @property
    def video(self) -> str:
        """The street video a frame comes from ("" for product photos)."""
        return self.name.split("_")[0] if self.kind == "camvid" else ""


def read_wild(folder: str | Path) -> list[WildPhoto]:
    """Every (photo, mask) pair listed in `folder/index.csv`, with its people mask where
    people/NAME.png exists; a missing file or column, or a row that cannot be read (not UTF-8,
    too few or too many fields, no name, a name listed twice), is a DataError naming index.csv
    and the line; a people mask of another size than its photo is a DataError naming both."""
    folder = Path(folder)
    index = folder / "index.csv"
    if not index.is_file():
        raise DataError(index, "no index.csv: expected a cars_in_the_wild folder "
                               "(images/, masks/, index.csv)")
    reader = csv.DictReader(_index_lines(index))
    try:
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(index, f"missing column(s) {', '.join(missing)}")
        photos, first_line = [], {}
        for row in reader:
            line = reader.line_num  # the file's line, whatever blank lines came before
            name = _checked_name(row, reader.fieldnames, index, line, first_line)
            image, mask = folder / "images" / f"{name}.jpg", folder / "masks" / f"{name}.png"
            for path in (image, mask):
                if not path.is_file():
                    raise DataError(path, f"listed on line {line} of {index} but missing")
            parts = Path(row["source_path"]).parts
            people = _people_mask(folder, name, image)
            photos.append(WildPhoto(name, row["kind"], image, mask, parts[1] if len(parts) > 2 else "",
                                    people))
    except csv.Error as error:  # a NUL byte, say
        raise DataError(index, f"line {reader.line_num}: not a CSV row ({error})") from None
    if not photos:
        raise DataError(index, "lists no photos")
    return photos


def _people_mask(folder: Path, name: str, image: Path) -> Path | None:
    """people/NAME.png when there is one, after checking it has its photo's size: a people mask
    that does not line up would count the wrong pixels, and paste the wrong ones in training."""
    people = folder / "people" / f"{name}.png"
    if not people.is_file():
        return None
    try:
        photo_size = read_photo_header(image).size
    except PhotoError:  # an unreadable photo is named when it is used (evaluate leaves it out)
        return people
    people_size = read_photo_header(people).size
    if photo_size != people_size:
        (height, width), (people_height, people_width) = photo_size, people_size
        raise DataError(people, f"the people mask is {people_width}x{people_height} but its photo "
                                f"{image} is {width}x{height}: they must be the same size")
    return people


def _index_lines(index: Path) -> io.StringIO:
    """index.csv's lines as text; DataError naming the line where it is not UTF-8 (a file saved
    by Excel as cp1252, say), rather than guessing what its bytes meant."""
    data = index.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark from Excel is fine
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(index, f"line {line}: not UTF-8 text (byte 0x{data[error.start]:02x} at "
                               f"column {column}); save it as UTF-8") from None
    return io.StringIO(text, newline="")  # line breaks as the csv module reads them


def _checked_name(row: dict, header: Sequence[str], index: Path, line: int,
                  first_line: dict[str, int]) -> str:
    """The photo name of an index.csv row, after checking the row has the header's fields and a
    name that is a file name, listed once."""
    if None in row or None in row.values():  # csv puts extra fields under None, fills up with None
        fields = len(header) + len(row.get(None, [])) - sum(v is None for v in row.values())
        raise DataError(index, f"line {line} has {fields} field(s), the header {len(header)}")
    name = row["name"]
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise DataError(index, f"line {line}: {name!r} is not a photo name")
    if name in first_line:
        raise DataError(index, f"line {line}: {name} is listed twice (first on line {first_line[name]})")
    first_line[name] = line
    return name


def split_wild(photos: list[WildPhoto]) -> tuple[list[WildPhoto], list[WildPhoto]]:
    """(training, validation): street frames by video, product photos by the export's split
    (its valid and test folders are validation)."""
    training = [p for p in photos if not is_held_out(p)]
    validation = [p for p in photos if is_held_out(p)]
    return training, validation


def is_held_out(photo: WildPhoto) -> bool:
    """Whether a photo belongs to the validation split (see `split_wild`)."""
    if photo.kind == "camvid":
        return photo.video in VALIDATION_VIDEOS
    return photo.source_split in ("valid", "test")


def is_wild_folder(folder: str | Path) -> bool:
    """A cars_in_the_wild-style folder (index.csv, images/, masks/) rather than Kaggle's layout."""
    folder = Path(folder)
    return (folder / "index.csv").is_file() and (folder / "images").is_dir()


def as_records(photos: list[WildPhoto]) -> list[Record]:
    """The photos as `Record`s, for evaluation: each photo is its own "car", and the kind of
    photo (web or camvid) stands in the make column, so reports break the figures down by it."""
    return [Record(image_id=p.name, car_id=p.name, view=0, image_path=p.image_path,
                   mask_path=p.mask_path, subset="train", make=p.kind) for p in photos]
