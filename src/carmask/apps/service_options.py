"""The service's options: one table per endpoint, read from the multipart form and the query
string alike, with the CLI's and the API's names; what an endpoint does not take is refused by
name. The tables also write the endpoints' OpenAPI documentation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, QueryParams, UploadFile
from starlette.exceptions import HTTPException

from carmask.apps.canvas import ALIGNS, Canvas
from carmask.apps.cutout import MEDIA_TYPES, CutoutError, parse_background


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# how read_photo's reasons for refusing a photo answer over HTTP
# -- the options ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One option: how its text is read (ValueError says what is wrong), its default (as read),
    and its OpenAPI schema (with the description)."""
    parse: Callable[[str], Any]
    default: Any
    schema: dict[str, Any]


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def flag(description: str) -> Option:
    return Option(parse_bool, False, {"type": "boolean", "default": False, "description": description})


def one_of(values: Sequence[str], default: str, description: str,
           aliases: dict[str, str] | None = None) -> Option:
    def parse(text: str) -> str:
        word = text.strip().lower()
        word = (aliases or {}).get(word, word)
        if word not in values:
            raise ValueError(f"{text!r} is not one of {', '.join(values)}")
        return word
    return Option(parse, default, {"type": "string", "enum": list(values), "default": default,
                                   "description": description})


def number(low: float, high: float, default: float, description: str, whole: bool = False) -> Option:
    def parse(text: str) -> float:
        try:
            value = int(text) if whole else float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a {'whole ' if whole else ''}number") from None
        if not low <= value <= high:  # NaN too
            raise ValueError(f"{text.strip()} is not within {low:g}..{high:g}")
        return value
    return Option(parse, default, {"type": "integer" if whole else "number", "minimum": low,
                                   "maximum": high, "default": default, "description": description})


def free_text(default: str, description: str, parse: Callable[[str], Any] = str.strip) -> Option:
    return Option(parse, parse(default), {"type": "string", "default": default, "description": description})


def parse_canvas(text: str) -> tuple[int, int] | None:
    """'1600x1200' → (1600, 1200); '', 'off' or 'none' → no canvas."""
    if text.strip().lower() in ("", "off", "none"):
        return None
    return Canvas.parse(text).size  # a ValueError names what is wrong


def parse_rgba(text: str) -> tuple[int, int, int, int] | None:
    """rembg's background colour, 'r,g,b,a' (0..255 each; a = 255 is opaque), or 'r,g,b', or any
    colour carmask's `background` takes (white, #RRGGBB), opaque; '' or transparent: none."""
    if "," in text:
        try:
            channels = [int(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(f"{text!r} is not r,g,b,a with whole numbers") from None
        if len(channels) not in (3, 4) or not all(0 <= c <= 255 for c in channels):
            raise ValueError(f"{text!r}: expected r,g,b,a with 0..255 each")
        return tuple(channels + [255] * (4 - len(channels)))
    if not text.strip():
        return None
    try:
        background = parse_background(text, allow_files=False)
    except CutoutError as error:
        raise ValueError(str(error)) from None
    return None if background.transparent else (*background.color, 255)


MODELS = ("auto", "studio", "general")
# rembg's model names (`rembg s`, its sessions): a rembg client sends one; carmask's own choice
# of model (auto) serves it
REMBG_MODELS = ("u2net", "u2netp", "u2net_human_seg", "u2net_cloth_seg", "u2net_custom", "silueta",
                "isnet-general-use", "isnet-anime", "sam", "birefnet-general", "birefnet-general-lite",
                "birefnet-portrait", "birefnet-dis", "birefnet-hrsod", "birefnet-cod",
                "birefnet-massive", "bria-rmbg", "ben_custom", "dis_custom", "withoutbg")

MODEL = one_of(MODELS, "auto", "auto: each photo gets the studio model if it looks like Carvana's "
               "studio, else the general model; studio or general: that model for this photo.")
LARGEST = flag("Only the biggest car of a photo with several (default: every car).")
CUTOUT_FORMATS = tuple(MEDIA_TYPES)  # png, webp, jpg


@dataclass(frozen=True)
class Given:
    """A request's options, read and checked: every option's value (its default where not
    given), and its uploads."""
    values: dict[str, Any]
    uploads: dict[str, UploadFile]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


@dataclass(frozen=True)
class Endpoint:
    """What one endpoint takes: its uploads (multipart files; the first, the photo, is required)
    and its options (form fields or query parameters, alike)."""
    path: str
    uploads: dict[str, str]  # field → description
    options: dict[str, Option]

    @property
    def photo(self) -> str:
        return next(iter(self.uploads))

    def read(self, query: QueryParams, form: FormData) -> Given:
        """The options of a request, from its query string and its form; ApiError 422 for an
        option this endpoint does not take, one given twice with different values, an upload
        sent as text (or a value as a file), a value it cannot read, or no photo."""
        self._one_photo(form)
        texts: dict[str, str] = {}
        uploads: dict[str, UploadFile] = {}
        for where, items in (("query", query.multi_items()), ("form", form.multi_items())):
            for name, value in items:
                if name in self.uploads:
                    self._take_upload(name, value, where, uploads)
                elif name in self.options:
                    self._take_text(name, value, texts)
                else:
                    raise self._unknown(name)
        if self.photo not in uploads:
            raise ApiError(422, "invalid_request", f"{self.photo}: the photo is missing; send it as "
                           f"the multipart form field {self.photo!r}")
        values = {name: option.default for name, option in self.options.items()}
        for name, text in texts.items():
            try:
                values[name] = self.options[name].parse(text)
            except ValueError as error:
                message = str(error)
                raise ApiError(422, "invalid_request", message if message.startswith(name)
                               else f"{name}: {message}") from None
        return Given(values, uploads)

    def _one_photo(self, form: FormData) -> None:
        """422 naming every file part when a form carries more than one where one photo is
        expected (two `image` parts, or `image` and `file`): the answer would be for one of
        them, the other dropped without a word. Other uploads (background_image) are apart."""
        others = set(self.uploads) - {self.photo}
        files = [(name, value) for name, value in form.multi_items() if isinstance(value, UploadFile)
                 and name not in others and (value.filename or name == self.photo)]
        if len(files) > 1:
            fields = " and ".join(dict.fromkeys(_field(name) for name, _ in files))
            listed = ", ".join(f"{_field(name)} {_shown(value.filename)}" for name, value in files)
            raise ApiError(422, "several_photos", f"{fields}: {len(files)} files in one request "
                           f"({listed}); {self.path} takes one photo, as the field {self.photo!r}: "
                           f"send one photo a request")

    def _take_upload(self, name: str, value: str | UploadFile, where: str,
                     uploads: dict[str, UploadFile]) -> None:
        if not isinstance(value, UploadFile):
            sent = "a query parameter" if where == "query" else "a form field without a file name"
            if _is_nested_multipart(value):
                sent = ("a multipart/mixed part (several files in one field); send each file as "
                        "its own part, one photo a request")
            raise ApiError(422, "invalid_request", f"{name}: expected a file upload (a multipart "
                           f"form field with a file name), got {sent}")
        if name != self.photo and not value.filename:
            return  # a form's file input left empty
        if name in uploads:
            raise ApiError(422, "conflicting_option", f"{name}: uploaded more than once "
                           f"({_shown(uploads[name].filename)} and {_shown(value.filename)}); "
                           f"send one")
        uploads[name] = value

    @staticmethod
    def _take_text(name: str, value: str | UploadFile, texts: dict[str, str]) -> None:
        if isinstance(value, UploadFile):
            raise ApiError(422, "invalid_request", f"{name}: expected a value, got a file upload")
        if name in texts and texts[name] != value:
            raise ApiError(422, "conflicting_option", f"{name}: given twice with different values, "
                           f"{texts[name]!r} and {value!r} (in the query and the form?); give it once")
        texts[name] = value

    def _unknown(self, name: str) -> ApiError:
        shown = _field(name)
        elsewhere = [e.path for e in ENDPOINTS if e is not self and (name in e.options or name in e.uploads)]
        hint = f" (it is an option of {' and '.join(elsewhere)})" if elsewhere else ""
        takes = [f"{n} (a file)" for n in self.uploads] + list(self.options)
        return ApiError(422, "unknown_option", f"{shown}: {self.path} takes no such option{hint}; "
                        f"it takes {', '.join(takes)}")

    def openapi(self) -> dict:
        """The request body for the OpenAPI docs: every upload and option as a form field."""
        properties = {name: {"type": "string", "format": "binary", "description": text}
                      for name, text in self.uploads.items()}
        properties |= {name: option.schema for name, option in self.options.items()}
        schema = {"type": "object", "required": [self.photo], "properties": properties}
        return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


MASK = Endpoint("/v1/mask", {"image": "A car photo (JPEG, PNG, WebP, ...)."}, {
    "format": one_of(("png", "rle"), "png", "png (the mask, 0 or 255) or rle (Kaggle RLE in JSON)."),
    "largest": LARGEST,
    "model": MODEL,
})
CUTOUT = Endpoint("/v1/cutout", {
    "image": "A car photo (JPEG, PNG, WebP, ...).",
    "background_image": "An image to put behind the car, scaled to cover (with background=image "
                        "or left at transparent).",
}, {
    "background": free_text("transparent", "transparent, a colour (white, #RRGGBB, any CSS name), "
                            "or image (the background_image upload)."),
    "feather": number(0, 64, 0.0, "Softens the edge inward over this many pixels (instead of the "
                      "anti-aliased edge)."),
    "shadow": flag("A shadow under the car: a studio photo's own floor shadow, a soft synthetic "
                   "ground shadow for any other photo."),
    "largest": LARGEST,
    "hard_edges": flag("Alpha 0 or 255 (the mask) instead of soft, anti-aliased edges."),
    "canvas": free_text("", "WIDTHxHEIGHT (e.g. 1600x1200): the car cropped, scaled to fit within "
                        "margin and placed on a canvas of that size; empty or off: the photo's size.",
                        parse_canvas),
    "margin": number(0, 0.49, 0.05, "With canvas: the free border on each side, a fraction of "
                     "the canvas."),
    "align": one_of(ALIGNS, "center", "With canvas: center, or bottom (the car stands on the "
                    "bottom margin)."),
    "format": one_of(CUTOUT_FORMATS, "png", "png or webp (keep alpha), or jpg (needs a background).",
                     aliases={"jpeg": "jpg"}),
    "model": MODEL,
})
REMBG = Endpoint("/api/remove", {"file": "Image file (byte stream) that has to be processed."}, {
    "model": one_of(MODELS + REMBG_MODELS, "auto", "Honoured: carmask's auto, studio or general; "
                    "rembg's model names (u2net, isnet-general-use, ...) are accepted and get auto."),
    "a": flag("Alpha matting. Accepted; carmask's edges are always soft (anti-aliased from the "
              "model's probability)."),
    "af": number(0, 255, 240, "Alpha matting foreground threshold. Accepted and ignored.", whole=True),
    "ab": number(0, 255, 10, "Alpha matting background threshold. Accepted and ignored.", whole=True),
    "ae": number(0, 10_000, 10, "Alpha matting erode size. Accepted and ignored.", whole=True),
    "om": flag("Only mask: honoured, the mask PNG of /v1/mask (0 or 255)."),
    "ppm": flag("Post-process mask. Accepted and ignored: carmask's masks are already cleaned."),
    "bgc": free_text("", "Background colour, honoured: r,g,b,a (0..255 each, as rembg reads it) "
                     "or r,g,b, white, #RRGGBB; the car over it, in a PNG.", parse_rgba),
    "extras": free_text("", "rembg's extra session parameters (JSON). Accepted and ignored."),
})
ENDPOINTS = (MASK, CUTOUT, REMBG)
# far more than any endpoint takes, so that a form with too many files is refused naming them
# (the body limit bounds their bytes)
FORM_LIMITS = {"max_files": 16, "max_fields": 64}


def _field(name: str) -> str:
    """A form field's name as a message shows it: cut short, quoted when empty."""
    return (name if len(name) <= 60 else name[:57] + "...") or "''"


def _shown(filename: str | None) -> str:
    """An uploaded file's name as a message shows it: quoted and cut short."""
    if not filename:
        return "(no file name)"
    return repr(filename if len(filename) <= 60 else filename[:57] + "...")


def _is_nested_multipart(text: str) -> bool:
    """Whether a text field holds a multipart body: RFC 2388's several files in one field."""
    head = text[:1000].lstrip().lower()
    return head.startswith("--") and "content-disposition:" in head


REMBG_DESCRIPTION = """rembg's server API (`rembg s`), so a client written for rembg works
unchanged: POST the photo as the multipart field `file`; the answer is a PNG, the car cut out with
transparency (the same as /v1/cutout's default). Options come as form fields or query parameters.

- Honoured: `model` (carmask's `auto`, `studio` or `general`; rembg's model names, such as
  `u2net` or `isnet-general-use`, are accepted and get `auto`), `om` (only the mask: the PNG of
  /v1/mask), `bgc` (background colour `r,g,b,a`: the car composited over it, as rembg does;
  ignored with `om`, as in rembg).
- Always on: `a` (alpha matting): carmask's edges are always soft, anti-aliased from the model's
  probability; `a=false` does not make them hard (/v1/cutout's `hard_edges` does).
- Accepted and ignored: `af`, `ab`, `ae` (alpha matting's thresholds and erosion), `ppm`
  (post-processing; carmask's masks are already cleaned), `extras` (rembg session parameters).

rembg's GET /api/remove?url= is refused with a 422: carmask never fetches URLs."""


@asynccontextmanager
async def multipart(request: Request, endpoint: Endpoint):
    """The request's multipart form, its spooled uploads closed when done. Any other body (curl
    --data-binary sends the photo as a urlencoded form) is refused before it is parsed."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise ApiError(422, "invalid_request", f"{endpoint.photo}: send the photo in a multipart/form-data "
                       f"body as the field {endpoint.photo!r} (curl -F {endpoint.photo}=@car.jpg), not "
                       f"as {kind or 'a body without a content type'}")
    try:
        form = await request.form(**FORM_LIMITS)
    except HTTPException as error:
        if error.status_code != 400:  # the body limit's 413 stays as it is
            raise
        raise _unreadable_form(endpoint, str(error.detail)) from None  # a form it cannot parse
    try:
        yield form
    finally:
        await form.close()


def _unreadable_form(endpoint: Endpoint, detail: str) -> ApiError:
    """A multipart body Starlette refused, as a JSON error naming the photo's field."""
    if detail.startswith("Too many files"):
        return ApiError(422, "several_photos", f"{endpoint.photo}: more than "
                        f"{FORM_LIMITS['max_files']} files in one request; {endpoint.path} takes "
                        f"one photo, as the field {endpoint.photo!r}: send one photo a request")
    return ApiError(400, "bad_multipart", f"{endpoint.photo}: the multipart/form-data body cannot "
                    f"be read ({detail})")


def carmask_model(name: str) -> str:
    """auto, studio or general: as asked, or auto for a rembg model name."""
    return name if name in MODELS else "auto"
