"""The HTTP service on a real socket: masks and cut-outs of a real photo, every refusal as a JSON
4xx with the server still up afterwards, admission control under concurrent clients, one set of
options read alike from the form and the query, and rembg's API."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from carmask.data.io import read_mask
from carmask.apps.evaluate import dice_and_iou
from carmask.kaggle.rle import decode
from carmask.apps.serve import BackgroundServer, ServeConfig, create_app
from conftest import bomb_png

LIMITS = ServeConfig(max_bytes=4 * 2**20, max_pixels=12_000_000)


@pytest.fixture(scope="module")
def soft_predictor():
    """The service's own predictor: both models, keeping each photo's probability for soft edges."""
    from carmask.inference.route import AutoPredictor
    return AutoPredictor(backend="onnx", soft_edges=True)


@pytest.fixture(scope="module")
def server(soft_predictor):
    with BackgroundServer(create_app(soft_predictor, config=LIMITS)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def photo(held_out):
    return held_out[0].read_bytes(), read_mask(held_out[1])


def png_mask(response: httpx.Response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content))) > 127


def test_health_models_and_docs(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["models"] == ["general", "studio"]
    models = client.get("/v1/models").json()
    assert models["loaded"]["studio"]["architecture"] == models["loaded"]["general"]["architecture"] == "unet-mnv2"
    assert models["loaded"]["general"]["file"] != models["loaded"]["studio"]["file"]
    assert [m["role"] for m in models["shipped"]] == ["studio", "studio (--quality best)", "general",
                                                      "refiner"]
    assert all(m["file"].endswith(".onnx") and "Dice" in m["held_out"] for m in models["shipped"])
    assert models["limits"]["max_pixels"] == LIMITS.max_pixels
    docs = client.get("/docs").text
    assert "swagger" in docs.lower() and "cdn" not in docs  # the docs page works offline
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    assert {"/v1/mask", "/v1/cutout", "/api/remove"} <= set(client.get("/openapi.json").json()["paths"])


def test_mask_png_and_rle_agree_with_the_truth(client, photo):
    data, truth = photo
    png = client.post("/v1/mask", files={"image": ("car.jpg", data, "image/jpeg")})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-image-size"] == "1918x1280"
    mask = png_mask(png)
    assert mask.shape == truth.shape and dice_and_iou(mask, truth)[0] >= 0.98
    assert png.headers["x-carmask-model"] == "studio" and png.headers["x-carmask-warnings"] == "[]"
    rle = client.post("/v1/mask", params={"format": "rle"}, files={"image": ("car.jpg", data)}).json()
    assert (rle["width"], rle["height"]) == (1918, 1280)
    assert np.array_equal(decode(rle["rle"], (1280, 1918)), mask)
    assert rle["model"] == "studio" and rle["warnings"] == []


def test_a_photo_with_no_car_comes_with_a_warning(client):
    from test_anywhere import landscape
    buffer = io.BytesIO()
    Image.fromarray(landscape()).save(buffer, format="JPEG", quality=90)
    rle = client.post("/v1/mask", params={"format": "rle"}, files={"image": ("hills.jpg", buffer.getvalue())})
    assert rle.status_code == 200 and rle.json()["warnings"], rle.json()
    assert rle.json()["model"] == "general"
    cutout = client.post("/v1/cutout", files={"image": ("hills.jpg", buffer.getvalue())})
    assert json.loads(cutout.headers["x-carmask-warnings"]) == rle.json()["warnings"]


def test_largest_keeps_one_car_of_two(client, photo):
    from carmask.apps.cutout import largest_car
    data, _ = photo
    two = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    two = np.concatenate([two[:, :959], two[:, :959]], axis=1)  # two halves of the car side by side
    buffer = io.BytesIO()
    Image.fromarray(two).save(buffer, format="PNG")
    every = png_mask(client.post("/v1/mask", files={"image": ("two.png", buffer.getvalue())}))
    one = png_mask(client.post("/v1/mask", params={"largest": "true"},
                               files={"image": ("two.png", buffer.getvalue())}))
    assert np.array_equal(one, largest_car(every)) and 0 < one.sum() < every.sum()


def test_a_sideways_stored_photo_gets_its_mask_as_displayed(client, photo, held_out, tmp_path):
    from conftest import sideways_jpeg
    sideways = sideways_jpeg(held_out[0], tmp_path / "sideways.jpg").read_bytes()
    png = client.post("/v1/mask", files={"image": ("car.jpg", sideways)})
    assert png.status_code == 200 and png.headers["x-image-size"] == "1918x1280"
    assert dice_and_iou(png_mask(png), photo[1])[0] >= 0.98


def test_cutouts_transparent_colour_and_image(client, photo):
    data, truth = photo
    transparent = client.post("/v1/cutout", files={"image": ("car.jpg", data)})
    image = Image.open(io.BytesIO(transparent.content))
    assert image.mode == "RGBA" and image.size == (1918, 1280)
    assert dice_and_iou(np.asarray(image)[..., 3] > 127, truth)[0] >= 0.98
    assert 'filename="car-cutout.png"' in transparent.headers["content-disposition"]
    named = client.post("/v1/cutout", files={"image": ("車 été.jpg", data)}, data={"format": "webp"})
    assert named.status_code == 200  # headers are Latin-1: the name travels RFC 6266-encoded
    assert "filename*=UTF-8''%E8%BB%8A%20%C3%A9t%C3%A9-cutout.webp" in named.headers["content-disposition"]

    white = client.post("/v1/cutout", files={"image": ("car.jpg", data)},
                        data={"background": "white", "format": "jpg", "shadow": "true", "feather": "2"})
    assert white.headers["content-type"] == "image/jpeg"
    assert np.asarray(Image.open(io.BytesIO(white.content)))[:50].min() > 235

    backdrop = io.BytesIO()
    Image.new("RGB", (300, 200), (0, 0, 255)).save(backdrop, "PNG")
    onto = client.post("/v1/cutout", files={"image": ("car.jpg", data),
                                            "background_image": ("sky.png", backdrop.getvalue())},
                       data={"format": "webp"})
    pixels = np.asarray(Image.open(io.BytesIO(onto.content)).convert("RGB"))
    assert pixels.shape == (1280, 1918, 3)
    assert pixels[:50, :50, 2].min() > 230 and pixels[:50, :50, :2].max() < 25


def big_but_valid_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buffer, "PNG")  # 16 MP: over the limit, 60 KB on the wire
    return buffer.getvalue()


BAD_UPLOADS = {
    "empty": (lambda photo: b"", 400, "empty_body"),
    "text": (lambda photo: b"this is not a photo", 415, "not_an_image"),
    "truncated": (lambda photo: photo[: len(photo) // 2], 400, "truncated_image"),
    # libjpeg only warns of this one, and fills the missing half with grey
    "truncated, end marker put back": (lambda photo: photo[: len(photo) // 2] + b"\xff\xd9", 400,
                                       "truncated_image"),
    "bomb": (lambda photo: bomb_png(100_000, 100_000), 413, "too_many_pixels"),  # 10 gigapixels
    "many pixels": (lambda photo: big_but_valid_png(), 413, "too_many_pixels"),
    "many bytes": (lambda photo: photo + bytes(LIMITS.max_bytes), 413, "too_large"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
@pytest.mark.parametrize("endpoint, field", [("/v1/mask", "image"), ("/v1/cutout", "image"),
                                             ("/api/remove", "file")])
def test_bad_uploads_get_their_4xx_and_the_server_stays_up(client, photo, case, endpoint, field):
    make, status, code = BAD_UPLOADS[case]
    response = client.post(endpoint, files={field: ("upload.jpg", make(photo[0]))})
    assert response.status_code == status, response.headers
    error = response.json()["error"]
    assert error["code"] == code and error["message"].startswith(field)
    assert client.get("/healthz").json()["status"] == "ok"


@pytest.mark.parametrize("form, code", [({"background": "plaid"}, "bad_background"),
                                        ({"background": "rgb(300,0,0)"}, "bad_background"),
                                        ({"background": "image"}, "bad_background"),
                                        ({"format": "jpg"}, "bad_format"),
                                        ({"format": "gif"}, "invalid_request"),
                                        ({"feather": "-3"}, "invalid_request"),
                                        ({"shadow": "maybe"}, "invalid_request"),
                                        ({"canvas": "1600by1200"}, "invalid_request"),
                                        ({"canvas": "8x8"}, "invalid_request"),
                                        ({"margin": "0.1"}, "invalid_request"),  # no canvas
                                        ({"align": "top", "canvas": "800x600"}, "invalid_request")])
def test_bad_cutout_options_are_422(client, photo, form, code):
    response = client.post("/v1/cutout", files={"image": ("car.jpg", photo[0])}, data=form)
    assert response.status_code == 422 and response.json()["error"]["code"] == code
    assert response.json()["error"]["message"].startswith(next(iter(form)))  # it names the option


def test_options_as_form_fields_or_query_parameters_give_the_same_answer(client, photo):
    data = photo[0]
    for endpoint, options in (("/v1/mask", {"format": "rle", "largest": "true"}),
                              ("/v1/cutout", {"background": "#102030", "format": "jpg", "shadow": "true",
                                              "canvas": "640x480", "align": "bottom", "margin": "0.1"})):
        as_form = client.post(endpoint, files={"image": ("car.jpg", data)}, data=options)
        as_query = client.post(endpoint, files={"image": ("car.jpg", data)}, params=options)
        names = list(options)
        half = len(names) // 2  # some in each, and one in both with the same value
        mixed = client.post(endpoint, files={"image": ("car.jpg", data)},
                            params={n: options[n] for n in names[:half + 1]},
                            data={n: options[n] for n in names[half:]})
        assert as_form.status_code == as_query.status_code == mixed.status_code == 200, as_query.text
        assert as_form.content == as_query.content == mixed.content
    assert as_form.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(as_form.content)).size == (640, 480)


@pytest.mark.parametrize("endpoint, query, form, code, named", [
    ("/v1/mask", {}, {"background": "white"}, "unknown_option", "/v1/cutout"),  # misplaced
    ("/v1/mask", {"shadow": "true"}, {}, "unknown_option", "/v1/cutout"),
    ("/v1/cutout", {}, {"hard-edges": "true"}, "unknown_option", "hard_edges"),  # kebab: CLI spelling
    ("/v1/cutout", {"colour": "red"}, {}, "unknown_option", "background"),
    ("/api/remove", {}, {"canvas": "800x600"}, "unknown_option", "/v1/cutout"),
    ("/v1/cutout", {"format": "png"}, {"format": "webp"}, "conflicting_option", "'png' and 'webp'"),
    ("/v1/mask", {"largest": "true"}, {"largest": "false"}, "conflicting_option", "largest"),
    ("/v1/cutout", {"hard_edges": "true"}, {"feather": "3"}, "conflicting_option", "feather"),
    ("/v1/cutout", {}, {"background_image": "sky.png"}, "invalid_request", "file upload"),
    ("/v1/mask", {"model": "turbo"}, {}, "invalid_request", "auto, studio, general"),
])
def test_unknown_misplaced_or_conflicting_options_are_422_naming_them(client, photo, endpoint, query,
                                                                      form, code, named):
    field = "file" if endpoint == "/api/remove" else "image"
    response = client.post(endpoint, files={field: ("car.jpg", photo[0])}, params=query, data=form)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    option = next(iter(query or form))
    assert error["code"] == code and error["message"].startswith(option) and named in error["message"]


def test_the_model_is_chosen_per_request(client, photo, shipped_predictor):
    data, truth = photo
    for model in ("studio", "general"):
        for endpoint in ("/v1/mask", "/v1/cutout"):
            response = client.post(endpoint, files={"image": ("car.jpg", data)}, params={"model": model})
            assert response.status_code == 200 and response.headers["x-carmask-model"] == model
        rle = client.post("/v1/mask", files={"image": ("car.jpg", data)},
                          data={"model": model, "format": "rle"}).json()
        assert rle["model"] == model and dice_and_iou(decode(rle["rle"], truth.shape), truth)[0] >= 0.95
    studio, general = (png_mask(client.post("/v1/mask", files={"image": ("car.jpg", data)},
                                            data={"model": m})) for m in ("studio", "general"))
    assert not np.array_equal(studio, general)  # two models, two masks
    # a service on one model file has no studio or general model to offer
    with BackgroundServer(create_app(shipped_predictor, config=LIMITS)) as one, \
            httpx.Client(base_url=one.url, timeout=60) as http:
        refused = http.post("/v1/cutout", files={"image": ("car.jpg", data)}, data={"model": "general"})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "model_unavailable"
        assert "one model file" in refused.json()["error"]["message"]


def test_rembg_clients_work_unchanged(client, photo):
    data = photo[0]
    ours = client.post("/v1/cutout", files={"image": ("car.jpg", data)})
    theirs = client.post("/api/remove", files={"file": ("car.jpg", data)})
    assert theirs.status_code == 200 and theirs.headers["content-type"] == "image/png"
    alpha = np.asarray(Image.open(io.BytesIO(theirs.content)))[..., 3]
    assert np.array_equal(alpha, np.asarray(Image.open(io.BytesIO(ours.content)))[..., 3])
    # rembg's options: its model names and alpha matting accepted, the same cut-out
    ignored = client.post("/api/remove", files={"file": ("car.jpg", data)},
                          data={"model": "isnet-general-use", "a": "true", "af": "240", "ab": "10",
                                "ae": "10", "ppm": "true"}, params={"extras": '{"sam_prompt": []}'})
    assert ignored.status_code == 200 and ignored.content == theirs.content
    only_mask = client.post("/api/remove", files={"file": ("car.jpg", data)}, data={"om": "true"})
    assert np.array_equal(png_mask(only_mask), png_mask(client.post("/v1/mask", files={"image": ("c.jpg", data)})))
    blue = client.post("/api/remove", files={"file": ("car.jpg", data)}, params={"bgc": "0,0,255,255"})
    pixels = np.asarray(Image.open(io.BytesIO(blue.content)))
    assert pixels[..., 3].min() == 255 and tuple(pixels[0, 0]) == (0, 0, 255, 255)
    fetch = client.get("/api/remove", params={"url": "http://169.254.169.254/latest/meta-data"})
    assert fetch.status_code == 422 and fetch.json()["error"]["code"] == "no_fetching"
    assert "never fetches" in fetch.json()["error"]["message"]
    described = client.get("/openapi.json").json()["paths"]["/api/remove"]["post"]["description"]
    assert all(name in described for name in ("`om`", "`bgc`", "`af`", "`ppm`", "`extras`"))


def test_a_canvas_frames_the_car_alike(client, photo):
    data = photo[0]
    placed = client.post("/v1/cutout", files={"image": ("car.jpg", data)},
                         data={"canvas": "1600x1200", "margin": "0.1", "align": "bottom"})
    assert placed.status_code == 200 and placed.headers["x-image-size"] == "1918x1280"  # the photo's
    alpha = np.asarray(Image.open(io.BytesIO(placed.content)))[..., 3]
    assert alpha.shape == (1200, 1600)
    rows, cols = np.flatnonzero((alpha > 127).any(axis=1)), np.flatnonzero((alpha > 127).any(axis=0))
    assert abs(rows[-1] - (1200 - 120)) <= 2  # standing on the bottom margin
    assert cols[0] >= 160 - 2 and cols[-1] <= 1600 - 160 + 2 and rows[0] >= 120 - 2


def test_soft_edges_by_default_agree_with_the_mask(client, photo):
    data = photo[0]
    mask = png_mask(client.post("/v1/mask", files={"image": ("car.jpg", data)}))
    soft = np.asarray(Image.open(io.BytesIO(client.post("/v1/cutout", files={"image": ("car.jpg", data)}).content)))
    alpha = soft[..., 3]
    assert np.array_equal(alpha > 127, mask)
    between = (alpha > 0) & (alpha < 255)
    outline = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    assert between.sum() > 0.5 * outline.sum()  # anti-aliased along the outline...
    near = cv2.dilate(outline.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    assert not (between & ~mask & ~near).any()  # ...with no halo beyond it
    hard = client.post("/v1/cutout", files={"image": ("car.jpg", data)}, params={"hard_edges": "true"})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(hard.content)))[..., 3], mask * np.uint8(255))


def test_a_shadow_under_a_car_photographed_anywhere(client):
    from conftest import WILD
    path = WILD / "images" / "2019-acura-rdx-11.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = path.read_bytes()
    plain, shaded = (client.post("/v1/cutout", files={"image": ("suv.jpg", data)},
                                 data={"shadow": flag, "hard_edges": "true"}) for flag in ("false", "true"))
    assert shaded.headers["x-carmask-model"] == "general"
    plain_alpha, shaded_alpha = (np.asarray(Image.open(io.BytesIO(r.content)))[..., 3].astype(int)
                                 for r in (plain, shaded))
    rows = np.flatnonzero((plain_alpha > 127).any(axis=1))
    below = slice(rows[-1] + 1, rows[-1] + 6)  # the ground just under the wheels
    assert plain_alpha[below].max() == 0 and shaded_alpha[below].max() > 20
    assert (shaded_alpha >= plain_alpha).all()  # the car itself untouched


def test_a_missing_field_and_a_whole_body_over_the_limit(client, photo):
    misnamed = client.post("/v1/mask", files={"photo": ("car.jpg", photo[0])})
    assert misnamed.status_code == 422 and "it takes image (a file)" in misnamed.json()["error"]["message"]
    missing = client.post("/v1/mask", files={"format": (None, "png")})  # multipart, no photo
    assert missing.status_code == 422 and "the photo is missing" in missing.json()["error"]["message"]
    raw = client.post("/v1/mask", content=photo[0], headers={"content-type": "image/jpeg"})
    assert raw.status_code == 422 and "multipart/form-data" in raw.json()["error"]["message"]
    huge = client.post("/v1/mask", content=b"0" * (10 * 2**20),
                       headers={"content-type": "multipart/form-data; boundary=x"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"


def test_concurrent_clients_get_identical_masks(client, photo):
    data = photo[0]
    reference = png_mask(client.post("/v1/mask", files={"image": ("car.jpg", data)}))

    def one(_):
        return client.post("/v1/mask", files={"image": ("car.jpg", data)})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(16)))
    assert all(r.status_code == 200 for r in responses)
    assert all(np.array_equal(png_mask(r), reference) for r in responses)


class SlowPredictor:
    """The real predictor, made slow, so that requests pile up deterministically."""

    def __init__(self, predictor, seconds: float) -> None:
        self._predictor, self.seconds = predictor, seconds
        self.config, self.path, self.backend = predictor.config, predictor.path, predictor.backend
        self.decode_cover = predictor.decode_cover

    def predict_decoded(self, pixels, size):
        time.sleep(self.seconds)
        return self._predictor.predict_decoded(pixels, size)


def test_a_full_queue_answers_503_and_recovers(shipped_predictor):
    small = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 200, 200)).save(small, "PNG")
    config = ServeConfig(workers=1, max_queue=1, cache=0)
    app = create_app(SlowPredictor(shipped_predictor, 1.0), config=config)
    with BackgroundServer(app) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        def one(i):  # distinct bytes per request, so no answer comes from the cache
            image = Image.new("RGB", (96, 64), (i, 0, 0))
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            return http.post("/v1/mask", files={"image": (f"{i}.png", buffer.getvalue())})

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(one, range(6)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) >= 2 and 503 in statuses and set(statuses) <= {200, 503}
        assert any(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 503)
        assert http.get("/healthz").json()["in_flight"] == 0
        assert one(99).status_code == 200


def test_the_serve_command_starts_answers_and_stops(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "carmask", "serve", "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "carmask serve did not start in 120 s"
                time.sleep(0.3)
        assert health["status"] == "ok" and health["capacity"] == 1 + 16
        assert "<title>carmask" in httpx.get(f"http://127.0.0.1:{port}/").text
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in output  # it says where the page is


def test_serve_refuses_a_missing_model_file(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "carmask", "serve", "--model",
                             str(tmp_path / "nope.safetensors")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and "nope.safetensors" in result.stderr


def test_serve_options_are_checked_before_the_model_loads(tmp_path):
    """Each refusal comes in a second or two (the model is never loaded: a missing model file
    would be named otherwise), and 0.0.0.0 is served only with a warning."""
    import socket
    import subprocess
    import sys

    def serve(*args):
        return subprocess.run([sys.executable, "-m", "carmask", "serve", *args], capture_output=True,
                              text=True, timeout=60)

    for port in ("70000", "0", "-1"):
        result = serve("--port", port)
        assert result.returncode == 2 and "--port" in result.stderr
    for option in ("--workers", "--max-megabytes"):
        result = serve(option, "0")
        assert result.returncode == 2 and option in result.stderr
    nomodel = ("--model", str(tmp_path / "none.safetensors"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = serve("--port", str(busy.getsockname()[1]), *nomodel)
    assert result.returncode == 1 and "cannot listen on 127.0.0.1:" in result.stderr
    assert "none.safetensors" not in result.stderr
    bad_host = serve("--host", "no-such-host.invalid", *nomodel)
    assert bad_host.returncode == 1 and "--host no-such-host.invalid" in bad_host.stderr
    bad_backend = serve("--backend", "tensorrt")
    assert bad_backend.returncode == 1 and "backend must be auto, torch or onnx" in bad_backend.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    exposed = serve("--host", "0.0.0.0", "--port", port, *nomodel)
    assert "reachable from the network, with no authentication" in exposed.stderr
    assert exposed.returncode == 1 and "none.safetensors" in exposed.stderr
    local = serve("--host", "localhost", "--port", port, *nomodel)
    assert "reachable from the network" not in local.stderr and "none.safetensors" in local.stderr
