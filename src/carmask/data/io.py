"""Reading Carvana images and masks, with errors that name the file and the problem.

Every photo is read by `read_photo`: the command line, the service, evaluation and the data
check all get the same pixels, the same EXIF orientation and the same refusals.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from carmask.util.atomic import atomic_path

cv2.setNumThreads(1)  # decoding runs in our own worker pools; nested threads only contend
# read_photo checks every photo's pixel count against its own limit before decoding; Pillow's
# warning for big ones would only repeat that, once per process, on stderr.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

try:  # HEIC and HEIF photos (iPhones) where the optional reader is installed: carmask[heic]
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:
    pass

MAX_PIXELS = 100_000_000  # per photo; a 1918x1280 Carvana photo is 2.5 MP, a 50 MP camera's 50
_ORIENTATION = 0x0112  # the EXIF tag


class DataError(ValueError):
    """A data file that cannot be used, with the file named in the message."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


class PhotoError(DataError):
    """A photo that cannot be used. `kind` says why in one word, for callers that map it to a
    code: missing, empty, not-an-image, too-many-pixels, truncated or corrupt."""

    def __init__(self, path: str | Path, kind: str, problem: str) -> None:
        super().__init__(path, problem)
        self.kind = kind


@dataclass(frozen=True)
class Photo:
    pixels: np.ndarray  # RGB uint8 (h, w, 3) as displayed; smaller than `size` when reduced
    size: tuple[int, int]  # the full (H, W) as displayed, i.e. after the EXIF orientation
    format: str  # what the content is (JPEG, PNG, ...), whatever the file is called


@dataclass(frozen=True)
class PhotoHeader:
    size: tuple[int, int]  # the full (H, W) as displayed
    format: str


def read_photo(source: str | Path | bytes, *, reduce: int = 1, cover: tuple[int, int] | None = None,
               max_pixels: int = MAX_PIXELS, name: str | Path | None = None) -> Photo:
    """Decode a photo (a file, or the bytes of one called `name`) as RGB, upright as displayed.

    - EXIF orientation is applied: masks made from these pixels align with the photo as any
      viewer shows it, and `size` is that displayed size.
    - JPEGs may be decoded smaller by libjpeg, several times faster than a full decode: by
      `reduce` (1, 2, 4 or 8), or by the largest of those whose output still covers `cover`
      (h, w) within a pixel. Other formats are decoded at full size.
    - The pixel count is checked against `max_pixels` from the header, before decoding.
    - Decoder warnings are errors: a truncated or corrupt photo would otherwise come back with
      its missing part filled with grey, and give a wrong mask without a word.
    Raises PhotoError naming the file and what it is.
    """
    if reduce not in (1, 2, 4, 8):
        raise ValueError(f"reduce must be 1, 2, 4 or 8, got {reduce}")
    label, data, stream = _source(source, name)
    with _open(stream, label, data, max_pixels) as image:
        stored, size, orientation = _check_header(image, label, max_pixels)
        if image.format in ("JPEG", "MPO") and image.mode in ("RGB", "L"):  # CMYK: Pillow below
            if data is None:
                data = Path(source).read_bytes()
            factor = reduction(size, cover) if cover else reduce
            pixels = _orient(_decode_jpeg(data, stored, factor, label), orientation)
            return Photo(pixels, size, "JPEG")
        if image.format in ("JPEG", "MPO"):  # CMYK: libjpeg checks the data, Pillow the colours
            _decode_jpeg(data or Path(source).read_bytes(), stored, 8, label, colorspace="CMYK")
        pixels = _decode_pillow(image, label)  # applies the orientation itself
        return Photo(pixels, pixels.shape[:2], image.format or "image")


def read_photo_header(source: str | Path | bytes, *, max_pixels: int = MAX_PIXELS,
                      name: str | Path | None = None) -> PhotoHeader:
    """What `read_photo` checks before decoding (what the file is, its displayed size, the pixel
    limit), without decoding: PhotoError as read_photo would raise it."""
    label, data, stream = _source(source, name)
    with _open(stream, label, data, max_pixels) as image:
        _, size, _ = _check_header(image, label, max_pixels)
        return PhotoHeader(size, "JPEG" if image.format == "MPO" else image.format or "image")


def reduction(source: tuple[int, int], target: tuple[int, int]) -> int:
    """Largest libjpeg reduction (1, 2, 4, 8) whose output covers `target` (h, w) pixels, give
    or take one: libjpeg rounds up (1918 / 4 → 480), and 1918 / 2 = 959 is as good as 960, where
    a full decode would cost three times as much."""
    for factor in (8, 4, 2):
        height, width = -(-source[0] // factor), -(-source[1] // factor)
        if height >= target[0] - 1 and width >= target[1] - 1:
            return factor
    return 1


def read_image(path: str | Path, reduce: int = 1) -> np.ndarray:
    """The pixels of `read_photo`: RGB uint8 (H, W, 3), upright, JPEGs reduced by `reduce`."""
    return read_photo(path, reduce=reduce).pixels


# -- the parts of read_photo --------------------------------------------------------------------
_SIGNATURES = {b"\xff\xd8": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP",
               b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"RIFF": "WebP"}


def sniff(head: bytes) -> str | None:
    """The image format a file's first bytes announce, or None."""
    return next((fmt for magic, fmt in _SIGNATURES.items() if head.startswith(magic)), None)


def _source(source, name):
    """(label for messages, bytes or None, what Pillow opens) of a path or of bytes."""
    label = name if name is not None else source
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return label, data, io.BytesIO(data)
    path = Path(source)
    if not path.is_file():
        raise PhotoError(label, "missing", "not a file" if path.exists() else "no such file")
    return label, None, path


def _open(stream, label, data: bytes | None, max_pixels: int) -> Image.Image:
    """Pillow's header parse, with every failure turned into a PhotoError that says what the
    file is instead: empty, text, an image whose header is cut short, or something else."""
    try:
        return Image.open(stream)
    except Image.DecompressionBombError as error:  # over twice Pillow's own limit
        size = _bomb_size(stream)
        if size:
            message = _too_many(size[0] * size[1], max_pixels, f"{size[0]}x{size[1]} is ")
        else:
            pixels = re.search(r"\((\d+) pixels\)", str(error))
            message = _too_many(int(pixels.group(1)) if pixels else 0, max_pixels)
        raise PhotoError(label, "too-many-pixels", message) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        if data is None:
            with open(stream, "rb") as file:
                data = file.read(512)
        raise _what_it_is(label, data[:512], error) from None


def _bomb_size(stream) -> tuple[int, int] | None:
    """(width, height) from the header of an image Pillow refused to open as a bomb, for the
    message: the format plugins parse headers without that check. None where that fails."""
    try:
        Image.init()
        with (open(stream, "rb") if isinstance(stream, Path) else stream) as file:
            file.seek(0)
            prefix = file.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                if accept is None or accept(prefix):
                    file.seek(0)
                    return factory(file).size
    except Exception:  # only a nicer message is at stake
        return None
    return None


def _check_header(image: Image.Image, label,
                  max_pixels: int) -> tuple[tuple[int, int], tuple[int, int], int]:
    """The stored (H, W), the displayed (H, W) and the EXIF orientation (1..8), after checking
    the pixel limit."""
    width, height = image.size
    if width * height > max_pixels:
        raise PhotoError(label, "too-many-pixels",
                         _too_many(width * height, max_pixels, f"{width}x{height} is "))
    # Pillow keeps a JPEG's raw EXIF in info; parsing it only when there is some is cheaper
    orientation = image.getexif().get(_ORIENTATION, 1) if "exif" in image.info else 1
    orientation = orientation if orientation in range(1, 9) else 1
    turned = orientation in (5, 6, 7, 8)  # a quarter turn: width and height swap places
    return (height, width), (width, height) if turned else (height, width), orientation


def _what_it_is(label, head: bytes, error: Exception) -> PhotoError:
    if not head:
        return PhotoError(label, "empty", "empty file (0 bytes)")
    fmt = sniff(head)
    if fmt:
        return PhotoError(label, "corrupt",
                          f"a {fmt} file whose header cannot be read: cut short or corrupt ({error})")
    text = _as_text(head)
    if text is not None:
        kind = "HTML" if "<html" in text.lower() or "<!doctype" in text.lower() else "text"
        first = text.strip().splitlines()[0] if text.strip() else ""
        what = f"it looks like {kind}: {first[:40]!r}"
    else:
        what = f"unknown format, starting {head[:8].hex(' ')}"
    return PhotoError(label, "not-an-image",
                      f"not an image ({what}); JPEG, PNG, WebP, GIF, BMP and TIFF can be read")


def _as_text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # not just a character cut at the end of the sample
            return None
        text = head[:error.start].decode("utf-8")
    return text if all(c.isprintable() or c.isspace() for c in text) else None


def _too_many(count: int, limit: int, prefix: str = "") -> str:
    return (f"{prefix}{count / 1e6:.1f} megapixels, over the limit of {limit / 1e6:.1f} "
            "(refused before decoding)")


def _decode_jpeg(data: bytes, stored: tuple[int, int], factor: int, label,
                 colorspace: str = "RGB") -> np.ndarray:
    """libjpeg-turbo via simplejpeg, which (unlike OpenCV and Pillow) can report its warnings:
    'Premature end of JPEG file' and 'Corrupt JPEG data' mean grey where the photo should be."""
    height, width = stored
    options = {"colorspace": colorspace, "min_height": -(-height // factor),
               "min_width": -(-width // factor)}
    try:
        return simplejpeg.decode_jpeg(data, strict=True, **options)
    except ValueError as error:
        message = str(error).strip().rstrip(".")
        stray = _STRAY_BEFORE_END.search(message)
        if stray and _is_filler(_bytes_before_end(data, int(stray.group(1)))):
            # padding between the image data and its end marker: every pixel was decoded from
            # the data that was coded for it, so the picture is whole
            return simplejpeg.decode_jpeg(data, strict=False, **options)
        if stray:
            raise PhotoError(label, "corrupt", f"corrupt JPEG data: {stray.group(1)} bytes of coded "
                             "image data are left over after the last pixel the header declares "
                             "(the scan was spliced or replaced), so the pixels are not the "
                             "photo's") from None
        if "premature end" in message.lower():  # the coded data ends before the last pixel
            raise PhotoError(label, "truncated",
                             f"truncated: the JPEG data stops early ({message})") from None
        raise PhotoError(label, "corrupt", f"corrupt JPEG data ({message})") from None


_STRAY_BEFORE_END = re.compile(r"(\d+) extraneous bytes before marker 0xd9", re.IGNORECASE)


def _bytes_before_end(data: bytes, count: int) -> bytes:
    """The `count` bytes libjpeg skipped before the end-of-image marker. Inside a scan 0xFF is
    always followed by 0x00 or a restart marker, so the first FF D9 after the first scan's start
    is the image's end (an MPO's second picture, or a trailer, may follow it)."""
    end = data.find(b"\xff\xd9", data.find(b"\xff\xda"))
    return data[max(0, end - count):end] if end > 0 else b""


def _is_filler(stray: bytes) -> bool:
    """Padding (one byte value repeated) holds no picture; anything else is coded data the
    decoder never used."""
    return len(set(stray)) <= 1


def _decode_pillow(image: Image.Image, label) -> np.ndarray:
    try:
        image.load()
        return np.asarray(eight_bit(ImageOps.exif_transpose(image)).convert("RGB"))
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        kind = "truncated" if "truncat" in str(error).lower() else "corrupt"
        raise PhotoError(label, kind, f"{kind} {image.format} data ({error})") from None


def eight_bit(image: Image.Image) -> Image.Image:
    """Greyscale of more than 8 bits as a viewer shows it: Pillow's convert("RGB") clips 16-bit
    values at 255, so a 16-bit PNG would read as almost white."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
    else:  # 16 bits (I;16, or a 16-bit PNG that Pillow opens as I)
        top = 65535.0 if image.mode.startswith("I;16") or (values.size and values.max() > 255) else 255.0
    scaled = np.clip(np.nan_to_num(values) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, "L")


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright, as EXIF orientation 1..8 says (as Pillow's exif_transpose)."""
    turned = {
        2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
    }.get(orientation)
    return np.ascontiguousarray(turned(pixels)) if turned else pixels


_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}


def truncation_problem(path: str | Path, tail: int = 1024) -> str | None:
    """Why a JPEG or PNG file is cut short (its end marker is missing), or None: a cheap check
    of the file's end, without decoding. The format is the content's, not the file name's."""
    with open(path, "rb") as file:
        marker = _END_MARKERS.get(sniff(file.read(16)) or "")
        if marker is None:
            return None
        file.seek(max(0, Path(path).stat().st_size - tail))
        if marker not in file.read():
            return "file ends before its end-of-image marker"
    return None


# -- masks -------------------------------------------------------------------------------------
def read_mask(path: str | Path) -> np.ndarray:
    """Decode a mask file as a bool array (H, W). Accepts values {0,1} or {0,255} only.

    An image with transparency (a cut-out, an RGBA PNG) is the mask in its alpha channel;
    its colours say nothing about where the car is."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames != 1:
                raise DataError(path, f"mask has {frames} frames, expected 1")
            values = _mask_values(image)
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(path, f"not a readable mask ({error})") from None
    if values.ndim != 2:
        raise DataError(path, f"mask must be single-channel, got shape {values.shape}")
    problem = binary_problem(values)
    if problem:
        raise DataError(path, problem)
    return values != 0


def _mask_values(image: Image.Image) -> np.ndarray:
    """The pixel values that hold the mask: alpha where the image has some transparency."""
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA").getchannel("A") if "A" not in image.getbands()
                           else image.getchannel("A"))
        if alpha.min(initial=255) < 255:  # an all-opaque alpha holds nothing: the colours do
            return alpha
    if image.mode == "P":
        # as a viewer shows it: the palette's colours, not its indices, say which pixels are car
        # (an inverted palette would otherwise turn the mask inside out without a word)
        return np.asarray(image.convert("L"))
    return np.asarray(image if image.mode in ("L", "1") else image.convert("L"))


def binary_problem(values: np.ndarray) -> str | None:
    """Why a mask's pixel values are not binary ({0,1} or {0,255}), or None when they are."""
    if values.dtype == bool:
        return None
    top = values.max(initial=0)
    if top <= 1:
        return None
    if top == 255 and not np.count_nonzero((values != 0) & (values != 255)):
        return None
    present = np.unique(values)  # slow path, only for masks that are already known to be bad
    shown = ", ".join(str(v) for v in present[:8].tolist()) + (", ..." if len(present) > 8 else "")
    return f"mask is not binary: values {{{shown}}}, expected {{0,1}} or {{0,255}}"


MASK_SUFFIXES = (".png", ".gif")  # lossless: a JPEG mask would not be a mask any more


GIF_MAX_SIDE = 65535  # its header's sides are 16-bit


def save_mask(mask: np.ndarray, path: str | Path) -> None:
    """Write a bool mask as a 0/255 PNG or a Kaggle-style {0,1} palette GIF, by extension,
    atomically. Any other extension, or a folder at `path`, raises DataError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MASK_SUFFIXES:
        raise DataError(path, f"masks are written as {' or '.join(MASK_SUFFIXES)} (lossless), "
                              f"not {path.suffix or 'a file without an extension'}")
    if path.is_dir():
        raise DataError(path, "is a folder; give a file name for the mask")
    if suffix == ".gif" and max(mask.shape) > GIF_MAX_SIDE:
        raise DataError(path, f"a GIF holds at most {GIF_MAX_SIDE} pixels a side and this mask is "
                              f"{mask.shape[0]}x{mask.shape[1]}: write it as .png")
    if suffix == ".gif":
        height, width = mask.shape
        image = Image.frombytes("P", (width, height), np.ascontiguousarray(mask, np.uint8).tobytes())
        image.putpalette([0, 0, 0, 255, 255, 255])
    else:
        image = Image.fromarray(mask.astype(np.uint8) * 255)
    with atomic_path(path) as tmp:
        # optimize=False: Pillow would otherwise drop unused palette entries and renumber pixels
        image.save(tmp, format="GIF" if suffix == ".gif" else "PNG", optimize=False)
