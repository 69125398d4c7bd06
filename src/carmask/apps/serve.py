"""`carmask serve`: the HTTP service and the web page, on one loaded model.

Requests are admitted up to `workers + max_queue` at a time (503 beyond that) and run in a pool
of `workers` threads, so concurrent clients neither crash it nor exhaust memory: at most
`workers` photos are decoded at once, each within the pixel limit, and waiting requests hold
only their upload (within the byte limit). Uploads are checked before decoding: empty, too many
bytes, not an image, too many pixels (decompression bombs are refused from the header), truncated.
Every refusal is a 4xx JSON `{"error": {"code", "message"}}` and the server stays up.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

import numpy as np
from fastapi import File, Form, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from carmask.apps.cutout import (
    MEDIA_TYPES,
    TRANSPARENT,
    Background,
    CutoutError,
    composite,
    encode_image,
    largest_car,
    parse_background,
)
from carmask.data.io import PhotoError, read_photo
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


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# how read_photo's reasons for refusing a photo answer over HTTP
_PHOTO_ERRORS = {"empty": (400, "empty_body"), "not-an-image": (415, "not_an_image"),
                 "too-many-pixels": (413, "too_many_pixels"), "truncated": (400, "truncated_image"),
                 "corrupt": (400, "corrupt_image")}


def decode_upload(data: bytes, field: str, config: ServeConfig) -> np.ndarray:
    """Upload bytes → RGB uint8 array, upright as displayed, or an ApiError that names the field
    and the problem. The same reader as the command line's (carmask.data.io.read_photo)."""
    if not data:
        raise ApiError(400, "empty_body", f"{field}: the upload is empty")
    if len(data) > config.max_bytes:
        raise ApiError(413, "too_large", f"{field}: more than the limit of {config.max_bytes:,} bytes")
    try:
        return read_photo(data, name=field, max_pixels=config.max_pixels).pixels
    except PhotoError as error:
        status, code = _PHOTO_ERRORS.get(error.kind, (400, "corrupt_image"))
        raise ApiError(status, code, str(error)) from None


@dataclass(frozen=True)
class Masked:
    mask: np.ndarray
    model: str  # "studio" or "general"
    warnings: list[str]


class MaskService:
    """The model behind the endpoints: one predictor, a bounded pool, a small mask cache."""

    def __init__(self, predictor, config: ServeConfig) -> None:
        self.predictor, self.config = predictor, config
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="carmask-serve")
        self.in_flight = 0
        self.handled = 0  # requests admitted, answered or refused
        self._cache: OrderedDict[str, tuple[np.ndarray, tuple[int, int], str, list[str]]] = OrderedDict()
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

    def mask(self, data: bytes, photo: np.ndarray, largest: bool = False) -> Masked:
        """The photo's mask (only its biggest car with `largest`), which model made it, and what
        the user should check."""
        key = hashlib.sha256(data).hexdigest()
        with self._lock:
            cached = self._cache.get(key)
            if cached:
                self._cache.move_to_end(key)
        if cached:
            packed, shape, model, warnings = cached
            mask = np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)
        else:
            prediction = self.predictor.predict_detailed([photo])[0]
            mask, model, warnings = prediction.mask, prediction.model, prediction.warnings
            with self._lock:
                self._cache[key] = (np.packbits(mask), mask.shape, model, warnings)
                while len(self._cache) > self.config.cache:
                    self._cache.popitem(last=False)
        return Masked(largest_car(mask) if largest else mask, model, list(warnings))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def create_app(predictor=None, *, model: str | None = None, backend: str = "onnx",
               config: ServeConfig | None = None):
    """The FastAPI app; loads the model once (the shipped one by default) unless given a
    `carmask.inference.predictor.Predictor`."""
    from carmask import __version__
    from carmask.inference.model_files import shipped_models

    config = config or ServeConfig()
    if predictor is None:
        from carmask.inference.route import create_predictor
        # each worker gets its share of the cores: oversubscribed model threads thrash
        threads = max(1, (os.cpu_count() or 1) // config.workers)
        predictor = create_predictor(model, backend=backend, threads=threads)
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
                    "the general model for any other. The web page is at `/`.",
    )
    app.state.service = service
    body_limit = 2 * config.max_bytes + 2**20  # a photo, a background image and the form
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=body_limit)  # chunked bodies
    app.add_middleware(RefuseLargeBodies, limit=body_limit)  # outermost: JSON from the header

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

    async def read_upload(upload: UploadFile) -> bytes:
        return await upload.read(config.max_bytes + 1)  # one byte over is enough for decode_upload

    def headers(started: float, masked: Masked) -> dict[str, str]:
        height, width = masked.mask.shape
        return {"X-Carmask-Model": masked.model,
                "X-Carmask-Warnings": json.dumps(masked.warnings),  # JSON is ASCII: header-safe
                "X-Carmask-Seconds": f"{time.perf_counter() - started:.3f}",
                "X-Image-Size": f"{width}x{height}"}

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
              responses={200: {"content": {"image/png": {}}}})
    async def mask_endpoint(
        image: Annotated[UploadFile, File(description="A car photo (JPEG, PNG, WebP, ...).")],
        format: Annotated[Literal["png", "rle"], Query(description="png or rle")] = "png",
        largest: Annotated[bool, Query(description="Only the biggest car (default: every car).")] = False,
    ):
        async with service.admitted():
            started = time.perf_counter()
            data = await read_upload(image)

            def work():
                masked = service.mask(data, decode_upload(data, "image", config), largest)
                mask = masked.mask
                if format == "rle":
                    return masked, {"width": mask.shape[1], "height": mask.shape[0], "rle": encode(mask),
                                    "car_fraction": round(float(mask.mean()), 6), "model": masked.model,
                                    "warnings": masked.warnings}
                buffer = io.BytesIO()
                Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG", compress_level=3)
                return masked, buffer.getvalue()

            masked, body = await service.run(work)
        if format == "rle":
            return JSONResponse(body, headers=headers(started, masked))
        return Response(body, media_type="image/png", headers=headers(started, masked))

    @app.post("/v1/cutout", summary="The car cut out: RGBA when transparent, else a composite",
              responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}})
    async def cutout_endpoint(
        image: Annotated[UploadFile, File(description="A car photo.")],
        background: Annotated[str, Form(description="transparent, a colour (white, #RRGGBB) or "
                                        "'image' with background_image")] = "transparent",
        background_image: Annotated[UploadFile | None, File(description="Image to put behind the "
                                                            "car, scaled to cover.")] = None,
        feather: Annotated[float, Form(ge=0, le=64, description="Soft edge width in pixels.")] = 0.0,
        shadow: Annotated[bool, Form(description="Keep the floor shadow.")] = False,
        format: Annotated[Literal["png", "webp", "jpg"], Form(description="png, webp or jpg")] = "png",
        largest: Annotated[bool, Form(description="Only the biggest car (default: every car).")] = False,
    ):
        async with service.admitted():
            started = time.perf_counter()
            data = await read_upload(image)
            backdrop_data = None
            if background_image is not None and background_image.filename:
                backdrop_data = await read_upload(background_image)
            choice = _background_choice(background, backdrop_data is not None)
            if format == "jpg" and choice is TRANSPARENT:
                raise ApiError(422, "bad_format", "format: jpg has no alpha channel; use png or webp, or "
                               "give a background colour or image")

            def work():
                photo = decode_upload(data, "image", config)
                chosen = choice
                if chosen is None:
                    chosen = Background.from_image(decode_upload(backdrop_data, "background_image", config))
                masked = service.mask(data, photo, largest)
                return masked, encode_image(composite(photo, masked.mask, chosen, feather=feather,
                                                      shadow=shadow), format)

            masked, body = await service.run(work)
        name = f"{Path(image.filename or 'photo').stem}-cutout.{format}"
        return Response(body, media_type=MEDIA_TYPES[format],
                        headers=headers(started, masked) | {"Content-Disposition": disposition(name)})

    return app


def loaded_models(predictor) -> dict[str, dict]:
    """What /v1/models and /healthz say of the model(s) behind a predictor, by role."""
    predictors = [predictor.studio, predictor.general] if hasattr(predictor, "general") else [predictor]
    loaded = {}
    for one in predictors:
        entry = {k: one.config.get(k) for k in ("architecture", "input_size", "threshold")}
        entry.update(file=one.path.name, backend=getattr(one, "backend", None),
                     training=one.config.get("training"))
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


def _background_choice(spec: str, has_image: bool) -> Background | None:
    """The parsed background, or None when it is the uploaded background image."""
    if has_image and spec.strip().lower() in ("image", "transparent", ""):
        return None
    if spec.strip().lower() == "image":
        raise ApiError(422, "bad_background", "background: 'image' needs a background_image upload")
    try:
        return parse_background(spec, allow_files=False)
    except CutoutError as error:
        raise ApiError(422, "bad_background", str(error)) from None


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
          backend: str = "onnx", config: ServeConfig | None = None) -> None:
    """Serve until interrupted (the `carmask serve` command)."""
    import uvicorn
    uvicorn.run(create_app(model=model, backend=backend, config=config), host=host, port=port,
                log_level="info")
