"""`carmask serve`: the HTTP service and the web page, on one loaded model.

The endpoints: /v1/mask (the car's mask), /v1/cutout (the car cut out), /api/remove (rembg's
server API, so a client written for rembg works unchanged), /v1/models, /healthz, and the web
page at `/`.

One set of options, named as the command line's and the Python API's (snake_case: hard_edges).
Every endpoint reads its options from the multipart form and from the query string alike; an
option it does not take, or one given twice with different values, is a 422 naming it: a
misplaced option is never silently ignored.

Requests are admitted up to `workers + max_queue` at a time (503 beyond that) and run in a pool
of `workers` threads, so concurrent clients neither crash it nor exhaust memory: at most
`workers` photos are decoded at once, each within the pixel limit, and waiting requests hold
only their upload (within the byte limit). Uploads are checked before decoding: empty, too many
bytes, not an image, too many pixels (decompression bombs are refused from the header), truncated,
two photos in one request; a cut-out its format cannot hold (WebP: 16383 pixels a side) is
refused before the model runs. Every refusal is a 4xx JSON `{"error": {"code", "message"}}` and
the server stays up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import time
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from carmask.apps.canvas import Canvas
from carmask.apps.cutout import (
    MEDIA_TYPES,
    TRANSPARENT,
    Background,
    CutoutError,
    CutoutOptions,
    EncodeError,
    check_encodable,
    encode_image,
    largest_car,
    output_size,
    parse_background,
    render,
)
from carmask.apps.service_options import (
    ApiError,
    CUTOUT,
    Endpoint,
    Given,
    MASK,
    REMBG,
    REMBG_DESCRIPTION,
    carmask_model,
    error_body,
    multipart,
)
from carmask.data.io import Photo, PhotoError, read_photo
from carmask.inference.refine import quality_record
from carmask.inference.streaming import Prediction
from carmask.kaggle.rle import encode

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).resolve().parent / "web"


@dataclass(frozen=True)
class ServeConfig:
    max_bytes: int = 25 * 2**20  # per uploaded file
    max_pixels: int = 40_000_000  # per decoded image (a 1918x1280 photo is 2.5 MP)
    workers: int = 2  # photos processed at once
    max_queue: int = 16  # requests waiting beyond those; more get 503
    cache: int = 16  # recent masks kept by upload hash, so re-composing a photo skips the model


_PHOTO_ERRORS = {"empty": (400, "empty_body"), "not-an-image": (415, "not_an_image"),
                 "too-many-pixels": (413, "too_many_pixels"), "truncated": (400, "truncated_image"),
                 "corrupt": (400, "corrupt_image")}


def decode_upload(data: bytes, field: str, config: ServeConfig,
                  cover: tuple[int, int] | None = None) -> Photo:
    """Upload bytes → the photo (RGB uint8, upright as displayed; JPEGs decoded only as large as
    `cover` needs), or an ApiError that names the field and the problem. The command line's
    reader (carmask.data.io.read_photo), so masks match `carmask cutout`'s of the same file."""
    if not data:
        raise ApiError(400, "empty_body", f"{field}: the upload is empty")
    if len(data) > config.max_bytes:
        raise ApiError(413, "too_large", f"{field}: more than the limit of {config.max_bytes:,} bytes")
    try:
        return read_photo(data, name=field, max_pixels=config.max_pixels, cover=cover)
    except PhotoError as error:
        status, code = _PHOTO_ERRORS.get(error.kind, (400, "corrupt_image"))
        raise ApiError(status, code, str(error)) from None


# -- the model behind the endpoints ---------------------------------------------------------------
@dataclass(frozen=True)
class _Cached:
    """A prediction in the cache, small: the mask a bit a pixel, the probability compressed."""
    packed: np.ndarray
    shape: tuple[int, int]
    model: str
    confidence: Any
    probability: bytes | None

    @classmethod
    def of(cls, prediction: Prediction) -> _Cached:
        soft = prediction.probability
        # the probability is 0 or 255 nearly everywhere but along the outline: zlib at level 1
        # takes a few milliseconds and leaves a few percent of it
        return cls(np.packbits(prediction.mask), prediction.mask.shape, prediction.model,
                   prediction.confidence, None if soft is None else zlib.compress(soft.tobytes(), 1))

    def prediction(self) -> Prediction:
        count = self.shape[0] * self.shape[1]
        mask = np.unpackbits(self.packed, count=count).reshape(self.shape).astype(bool)
        soft = None
        if self.probability is not None:
            soft = np.frombuffer(zlib.decompress(self.probability), np.uint8).reshape(self.shape)
        return Prediction(None, mask, model=self.model, confidence=self.confidence, probability=soft)


class MaskService:
    """The model behind the endpoints: one predictor, a bounded pool, a small prediction cache."""

    def __init__(self, predictor, config: ServeConfig) -> None:
        self.predictor, self.config = predictor, config
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="carmask-serve")
        self.in_flight = 0
        self.handled = 0  # requests admitted, answered or refused
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.config.workers + self.config.max_queue

    @asynccontextmanager
    async def admitted(self):
        """Hold one of `capacity` places for a whole request, from before its upload is read;
        503 when none is free, so a crowd of clients cannot pile uploads up in memory."""
        if self.in_flight >= self.capacity:
            raise ApiError(503, "busy", f"{self.in_flight} requests in progress; retry shortly",
                           headers={"Retry-After": "1"})
        self.in_flight += 1  # only touched on the event loop thread
        try:
            yield
        finally:
            self.in_flight -= 1
            self.handled += 1

    async def run(self, fn, *args):
        """Run `fn` on one of the `workers` threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def predictor_for(self, model: str):
        """The predictor a request's `model` asks for: the service's own for auto, else that
        sub-predictor of its AutoPredictor; 422 where it was started with one model file."""
        if model == "auto":
            return self.predictor
        if not hasattr(self.predictor, "general"):
            raise ApiError(422, "model_unavailable", f"model: this service was started with one model "
                           f"file ({self.predictor.path.name}), so only model=auto (that model) is "
                           f"available; start `carmask serve` without --model for {model}")
        return getattr(self.predictor, model)

    def predict(self, data: bytes, model: str = "auto", field: str = "image") -> Prediction:
        """The prediction for a photo's upload bytes (the form's `field`) by the `model` asked
        for: the mask at the photo's size (the command line's mask of the same file), the model
        that made it, the probability for soft edges where the predictor keeps it."""
        key = (model, hashlib.sha256(data).hexdigest())
        with self._lock:
            cached = self._cache.get(key)
            if cached:
                self._cache.move_to_end(key)
        if cached:
            return cached.prediction()
        predictor = self.predictor_for(model)
        # decoded as `predict_paths` decodes a file (libjpeg may shrink it to what the model needs)
        photo = decode_upload(data, field, self.config, cover=predictor.decode_cover)
        prediction = predictor.predict_decoded(photo.pixels, photo.size)
        if self.config.cache:
            with self._lock:
                self._cache[key] = _Cached.of(prediction)
                while len(self._cache) > self.config.cache:
                    self._cache.popitem(last=False)
        return prediction

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# -- what the endpoints answer --------------------------------------------------------------------
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
        if given["margin"] != CUTOUT.options["margin"].default or given["align"] != "center":
            raise ApiError(422, "invalid_request", "margin and align place the car on a canvas: give "
                           "canvas=WIDTHxHEIGHT (e.g. 1600x1200) too")
        return None
    return Canvas(given["canvas"], given["margin"], given["align"])


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


# -- the app --------------------------------------------------------------------------------------
def create_app(predictor=None, *, model: str | None = None, backend: str = "onnx",
               config: ServeConfig | None = None, quality: str = "fast"):
    """The FastAPI app; loads the model once (the shipped ones by default, keeping each photo's
    probability for soft cut-out edges, at `quality` for every request) unless given a
    predictor (`create_predictor`'s)."""
    from carmask import __version__
    from carmask.inference.model_files import shipped_models

    config = config or ServeConfig()
    if predictor is None:
        from carmask.inference.route import create_predictor
        # each worker gets its share of the cores: oversubscribed model threads thrash
        threads = max(1, (os.cpu_count() or 1) // config.workers)
        predictor = create_predictor(model, backend=backend, threads=threads, soft_edges=True,
                                     quality=quality)
    service = MaskService(predictor, config)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        service.close()

    app = FastAPIOffline(  # FastAPI whose /docs page needs no CDN
        lifespan=lifespan,
        title="carmask",
        version=__version__,
        description="Masks and cut-outs of cars in any photo: Carvana's studio model for studio photos, "
                    "the general model for any other. The web page is at `/`. Every endpoint takes "
                    "its options as multipart form fields or as query parameters alike; an option it "
                    "does not take is a 422 naming it.",
    )
    app.state.service = service
    body_limit = 2 * config.max_bytes + 2**20  # a photo, a background image and the form
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=body_limit)  # chunked bodies
    app.add_middleware(RefuseLargeBodies, limit=body_limit)  # outermost: JSON from the header
    add_error_handlers(app)

    async def read_upload(upload: UploadFile) -> bytes:
        return await upload.read(config.max_bytes + 1)  # one byte over is enough for decode_upload

    async def accept(endpoint: Endpoint, request: Request, form: FormData) -> tuple[Given, str, bytes]:
        """A request's options, the model it asks for, and its photo's bytes; every option is
        checked before the photo is read."""
        given = endpoint.read(request.query_params, form)
        model = carmask_model(given["model"])
        service.predictor_for(model)
        return given, model, await read_upload(given.uploads[endpoint.photo])

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/healthz", summary="Liveness and load")
    async def healthz():
        return {"status": "ok", "models": sorted(loaded_models(predictor)), "in_flight": service.in_flight,
                "capacity": service.capacity, "handled": service.handled}

    @app.get("/v1/models", summary="The loaded models and the models carmask ships")
    async def models():
        loaded = loaded_models(predictor)
        shipped = [{"role": m.role, "file": m.path.name, "id": m.id, "input": m.input,
                    "held_out": m.held_out, "licence": m.licence} for m in shipped_models()]
        return {"loaded": loaded, "shipped": shipped,
                "limits": asdict(config) | {"formats": list(MEDIA_TYPES)}}

    @app.post("/v1/mask", summary="The car's mask at the photo's size: a PNG, or Kaggle RLE JSON",
              description="Binary: 0 or 255 (soft edges are /v1/cutout's). Options as form fields "
                          "or query parameters (?format=rle).",
              responses={200: {"content": {"image/png": {}, "application/json": {}}}},
              openapi_extra=MASK.openapi())
    async def mask_endpoint(request: Request):
        async with service.admitted(), multipart(request, MASK) as form:
            started = time.perf_counter()
            given, model, data = await accept(MASK, request, form)

            def work():
                prediction = service.predict(data, model)
                mask = largest_car(prediction.mask) if given["largest"] else prediction.mask
                rle = given["format"] == "rle"
                return prediction, mask_rle(mask, prediction) if rle else mask_png(mask)

            prediction, body = await service.run(work)
        if given["format"] == "rle":
            return JSONResponse(body, headers=result_headers(started, prediction))
        return Response(body, media_type="image/png", headers=result_headers(started, prediction))

    @app.post("/v1/cutout", summary="The car cut out: RGBA when transparent, else a composite",
              description="Soft, anti-aliased edges unless hard_edges; at the photo's size, or on a "
                          "canvas. Options as form fields or query parameters, named as the command "
                          "line's (`carmask cutout --hard-edges` is hard_edges=true).",
              responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}},
              openapi_extra=CUTOUT.openapi())
    async def cutout_endpoint(request: Request):
        async with service.admitted(), multipart(request, CUTOUT) as form:
            started = time.perf_counter()
            given, model, data = await accept(CUTOUT, request, form)
            backdrop = given.uploads.get("background_image")
            backdrop_data = await read_upload(backdrop) if backdrop is not None else None
            chosen = background_choice(given["background"], backdrop_data is not None)
            if given["format"] == "jpg" and chosen is TRANSPARENT:
                raise ApiError(422, "bad_format", "format: jpg has no alpha channel; use png or webp, or "
                               "give a background colour or image")
            canvas = cutout_canvas(given)

            def work():
                background = chosen or Background.from_image(
                    decode_upload(backdrop_data, "background_image", config).pixels)
                options = CutoutOptions(background, given["feather"], given["shadow"], given["largest"],
                                        given["hard_edges"], canvas)
                photo = decode_upload(data, "image", config).pixels  # the cut-out is made in full
                fits(output_size(photo.shape, options), given["format"])  # WebP: 16383 a side
                prediction = service.predict(data, model)
                image = render(photo, prediction, options, service.predictor_for(model))
                return prediction, encoded(image, given["format"])

            prediction, body = await service.run(work)
        name = f"{Path(given.uploads['image'].filename or 'photo').stem}-cutout.{given['format']}"
        headers = result_headers(started, prediction) | {"Content-Disposition": disposition(name)}
        return Response(body, media_type=MEDIA_TYPES[given["format"]], headers=headers)

    @app.post("/api/remove", summary="rembg's API: the car cut out, a PNG",
              description=REMBG_DESCRIPTION, tags=["rembg"],
              responses={200: {"content": {"image/png": {}}}}, openapi_extra=REMBG.openapi())
    async def rembg_remove(request: Request):
        async with service.admitted(), multipart(request, REMBG) as form:
            started = time.perf_counter()
            given, model, data = await accept(REMBG, request, form)

            def work():
                prediction = service.predict(data, model, "file")
                if given["om"]:  # rembg lays no background colour under a mask
                    return prediction, mask_png(prediction.mask)
                photo = decode_upload(data, "file", config).pixels
                image = render(photo, prediction, CutoutOptions(), service.predictor_for(model))
                if given["bgc"] is not None:
                    image = over_colour(image, given["bgc"])
                return prediction, encoded(image, "png")

            prediction, body = await service.run(work)
        return Response(body, media_type="image/png", headers=result_headers(started, prediction))

    @app.get("/api/remove", summary="rembg's remove-from-URL: refused, carmask never fetches URLs",
             tags=["rembg"], responses={422: {"description": "Always: carmask never fetches URLs."}})
    async def rembg_remove_url():
        raise ApiError(422, "no_fetching", "carmask never fetches URLs (a server that did could be "
                       "made to reach into its own network): download the photo yourself and POST it "
                       "to /api/remove as the multipart field 'file'")

    return app


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


def loaded_models(predictor) -> dict[str, dict]:
    """What /v1/models and /healthz say of the model(s) behind a predictor, by role."""
    predictors = [predictor.studio, predictor.general] if hasattr(predictor, "general") else [predictor]
    loaded = {}
    for one in predictors:
        entry = {k: one.config.get(k) for k in ("architecture", "input_size", "threshold")}
        entry.update(file=one.path.name, backend=getattr(one, "backend", None),
                     training=one.config.get("training"), **quality_record(one))
        loaded[getattr(one, "role", "studio")] = entry
    return loaded


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


class BackgroundServer:
    """Run the app with uvicorn in a thread (tests, benchmarks, the demo); port 0 picks a free one.

        with BackgroundServer(create_app()) as server:
            httpx.get(server.url + "/healthz")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="carmask-server", daemon=True)
        self.host = host

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve(host: str = "127.0.0.1", port: int = 8000, *, model: str | None = None,
          backend: str = "onnx", config: ServeConfig | None = None, quality: str = "fast") -> None:
    """Serve until interrupted (the `carmask serve` command)."""
    import uvicorn
    uvicorn.run(create_app(model=model, backend=backend, config=config, quality=quality),
                host=host, port=port, log_level="info")
