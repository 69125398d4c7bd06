"""How `carmask serve` answers: encoded pictures and masks, the result headers, the options that
become a canvas or a background, and every refusal as JSON."""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import quote

import numpy as np
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException

from carmask.apps.canvas import Canvas
from carmask.apps.cutout import (
    Background,
    CutoutError,
    EncodeError,
    check_encodable,
    encode_image,
    parse_background,
)
from carmask.apps.service_options import ApiError, Given, error_body
from carmask.inference.streaming import Prediction
from carmask.kaggle.rle import encode

log = logging.getLogger(__name__)


def encoded(image: Image.Image, fmt: str) -> bytes:
    """Every picture the service answers with, encoded; a picture its format cannot hold, or
    its encoder failed on, is a 422 saying why (the upload is the cause, not the server)."""
    try:
        return encode_image(image, fmt)
    except EncodeError as error:
        raise ApiError(422, error.code, str(error)) from None


def fits(size: tuple[int, int], fmt: str) -> None:
    """A 422 before the model runs when `fmt` cannot hold a (width, height) answer."""
    try:
        check_encodable(size, fmt)
    except EncodeError as error:
        raise ApiError(422, error.code, str(error)) from None


def mask_png(mask: np.ndarray) -> bytes:
    return encoded(Image.fromarray(mask.astype(np.uint8) * 255), "png")


def mask_rle(mask: np.ndarray, prediction: Prediction) -> dict:
    return {"width": mask.shape[1], "height": mask.shape[0], "rle": encode(mask),
            "car_fraction": round(float(mask.mean()), 6), "model": prediction.model,
            "warnings": prediction.warnings}


def result_headers(started: float, prediction: Prediction) -> dict[str, str]:
    """Which model made the mask, what to check, how long it took, the photo's size."""
    height, width = prediction.mask.shape
    return {"X-Carmask-Model": prediction.model,
            "X-Carmask-Warnings": json.dumps(prediction.warnings),  # JSON is ASCII: header-safe
            "X-Carmask-Seconds": f"{time.perf_counter() - started:.3f}",
            "X-Image-Size": f"{width}x{height}"}


def cutout_canvas(given: Given) -> Canvas | None:
    """The canvas /v1/cutout's options ask for; margin and align without one are refused, as
    the command line refuses them."""
    if given["canvas"] is None:
        if Canvas.asked_without_canvas(None, given["margin"], given["align"]):
            raise ApiError(422, "invalid_request", "margin and align place the car on a canvas: give "
                           "canvas=WIDTHxHEIGHT (e.g. 1600x1200) too")
        return None
    return Canvas(given["canvas"], given["margin"], given["align"])


def check_edges(given: Given) -> None:
    """hard_edges and feather together are refused: a feathered edge is soft."""
    if given["hard_edges"] and given["feather"]:
        raise ApiError(422, "conflicting_option", "hard_edges and feather: a feathered edge is soft; "
                       "give one of them")


def background_choice(spec: str, has_image: bool) -> Background | None:
    """The parsed background, or None when it is the uploaded background image."""
    if has_image and spec.strip().lower() in ("image", "transparent", ""):
        return None
    if spec.strip().lower() == "image":
        raise ApiError(422, "bad_background", "background: 'image' needs a background_image upload")
    try:
        return parse_background(spec, allow_files=False)
    except CutoutError as error:
        raise ApiError(422, "bad_background", str(error)) from None


def over_colour(image: Image.Image, rgba: tuple[int, int, int, int]) -> Image.Image:
    """The cut-out over a colour of any opacity, as rembg's `bgc` lays it."""
    return Image.alpha_composite(Image.new("RGBA", image.size, rgba), image.convert("RGBA"))


def add_error_handlers(app) -> None:
    """Every refusal and failure as JSON {"error": {"code", "message"}}."""

    @app.exception_handler(ApiError)
    async def api_error(_request, error: ApiError):
        return JSONResponse(error_body(error.code, error.message), status_code=error.status,
                            headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
                             for e in error.errors())
        return JSONResponse(error_body("invalid_request", problems), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_request, error: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            error.status_code, "http_error")
        return JSONResponse(error_body(code, str(error.detail)), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_request, error: Exception):
        log.exception("unexpected error")
        return JSONResponse(error_body("internal", f"{type(error).__name__}: {error}"), status_code=500)


class RefuseLargeBodies:
    """A JSON 413 from the Content-Length header, before any of the body is read. Bodies without
    one (chunked) are cut off as they stream by Starlette's RequestBodyLimitMiddleware."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                response = JSONResponse(error_body(
                    "too_large", f"request body of {int(length):,} bytes is over the limit of "
                    f"{self.limit:,}"), status_code=413)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def disposition(filename: str) -> str:
    """An inline Content-Disposition for any file name: headers are Latin-1, so an ASCII
    fallback plus the RFC 6266 UTF-8 form."""
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
