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

import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.datastructures import FormData, UploadFile
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from carmask.apps.cutout import (
    MEDIA_TYPES,
    TRANSPARENT,
    Background,
    CutoutOptions,
    largest_car,
    output_size,
    render,
    with_canvas_warning,
)
from carmask.apps.mask_service import MaskService, ServeConfig, decode_upload
from carmask.apps.service_options import (
    ApiError,
    CUTOUT,
    Endpoint,
    Given,
    MASK,
    REMBG,
    REMBG_DESCRIPTION,
    carmask_model,
    multipart,
)
from carmask.apps.service_responses import (
    RefuseLargeBodies,
    add_error_handlers,
    background_choice,
    check_edges,
    cutout_canvas,
    disposition,
    encoded,
    fits,
    mask_png,
    mask_rle,
    over_colour,
    result_headers,
)
from carmask.inference.refine import quality_record

WEB_DIR = Path(__file__).resolve().parent / "web"


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
            check_edges(given)

            def work():
                background = chosen or Background.from_image(
                    decode_upload(backdrop_data, "background_image", config).pixels)
                options = CutoutOptions(background, given["feather"], given["shadow"], given["largest"],
                                        given["hard_edges"], canvas)
                photo = decode_upload(data, "image", config).pixels  # the cut-out is made in full
                fits(output_size(photo.shape, options), given["format"])  # WebP: 16383 a side
                prediction = service.predict(data, model)
                image = render(photo, prediction, options, service.predictor_for(model))
                return with_canvas_warning(prediction, options), encoded(image, given["format"])

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
