"""The web page at `/`, end to end in headless Chromium against the real shipped model.

One server and one browser for the module; one page uploads a real Carvana photo and the tests
then work on it in order (cut-out quality, the mask overlay, downloads, a colour background, soft
and hard edges, a canvas with a shadow, screenshots); the error test uses a page of its own.
"""

from __future__ import annotations

import io
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import HELD_OUT_PHOTO
from PIL import Image

from carmask.apps.evaluate import dice_and_iou

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking"]
TIMEOUT_MS = 30_000

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


def png_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


class Console:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def unexpected(self, allowed: tuple[str, ...] = ()) -> list[str]:
        return [e for e in self.errors if not any(re.search(p, e) for p in allowed)]


@pytest.fixture(scope="module")
def photo_paths(held_out) -> tuple[Path, Path]:
    return held_out


@pytest.fixture(scope="module")
def server():
    """The service as `carmask serve` makes it: both models, keeping probabilities for soft edges."""
    from carmask.apps.serve import BackgroundServer, create_app
    from carmask.inference.route import AutoPredictor
    predictor = AutoPredictor(backend="onnx", soft_edges=True)
    with BackgroundServer(create_app(predictor), host="127.0.0.1") as running:
        yield running


@pytest.fixture(scope="module")
def browser(server):
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def loaded(browser, server, photo_paths):
    """A laptop-sized page with the photo uploaded and cut out: (page, console, cut-out bytes)."""
    context = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console = Console(page)
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('model')")
    with page.expect_response(lambda r: r.url.endswith("/v1/cutout"), timeout=TIMEOUT_MS) as answer:
        page.set_input_files("#file-input", str(photo_paths[0]))
    response = answer.value
    assert response.status == 200, response.text()
    assert response.headers["x-image-size"] == "1918x1280"
    body = response.body()
    page.wait_for_selector("#status[data-state='done']")
    page.wait_for_selector("#result-frame:not(.empty)")
    yield page, console, body
    context.close()


def test_cutout_is_rgba_and_matches_the_true_mask(loaded, photo_paths):
    from carmask.data.io import read_mask
    page, console, body = loaded
    image = png_of(body)
    assert image.mode == "RGBA"
    truth = read_mask(photo_paths[1])
    alpha = np.asarray(image)[..., 3]
    assert alpha.shape == truth.shape
    assert dice_and_iou(alpha > 127, truth)[0] >= 0.98
    # the page shows what came back: the result canvas is the cut-out at full resolution
    assert page.eval_on_selector("#result-canvas", "c => [c.width, c.height]") == [1918, 1280]
    status = page.inner_text("#status")
    assert "1918×1280" in status and re.search(r"\d+\.\d\d s", status)
    assert "by the studio model" in status and page.is_hidden("#warning")
    assert "studio model" in page.inner_text("#model-info") and "general model" in page.inner_text("#model-info")
    assert console.unexpected() == []


def test_download_transparent_png_at_full_size(loaded, tmp_path):
    page, console, body = loaded
    assert page.is_enabled("#download")
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == f"{HELD_OUT_PHOTO}-cutout.png"
    data = Path(download.path()).read_bytes()
    image = png_of(data)
    assert image.size == (1918, 1280) and image.mode == "RGBA"
    assert data == body  # transparent: the server's PNG itself
    assert console.unexpected() == []


def test_mask_toggle_tints_the_original(loaded):
    page, console, _ = loaded
    before = page.locator("#original-frame").screenshot()
    page.check("#mask-toggle")
    assert page.is_visible("#mask-canvas")
    after = page.locator("#original-frame").screenshot()
    assert before != after
    # the tint covers the car (opaque in the cut-out) and nothing of the studio backdrop
    tinted = np.asarray(Image.open(io.BytesIO(after)).convert("RGB")).astype(int)
    plain = np.asarray(Image.open(io.BytesIO(before)).convert("RGB")).astype(int)
    changed = np.abs(tinted - plain).sum(axis=2) > 30
    assert 0.1 < changed.mean() < 0.6
    page.uncheck("#mask-toggle")
    assert not page.is_visible("#mask-canvas")
    assert console.unexpected() == []


def test_colour_background_gives_an_opaque_download(loaded):
    page, console, body = loaded
    page.click("label[for='bg-mode-color']")
    page.fill("#bg-color", "#123456")
    assert page.is_checked("#bg-mode-color")
    assert "checker" not in page.get_attribute("#result-frame", "class")
    with page.expect_download() as info:
        page.click("#download")
    image = png_of(Path(info.value.path()).read_bytes())
    assert image.size == (1918, 1280)
    rgba = np.asarray(image.convert("RGBA"))
    assert rgba[..., 3].min() == 255  # opaque everywhere
    assert tuple(rgba[5, 5, :3]) == (0x12, 0x34, 0x56)  # the backdrop is the chosen colour
    car = np.asarray(png_of(body))[..., 3] == 255
    photo_rgb = np.asarray(png_of(body))[..., :3]
    assert np.abs(rgba[..., :3][car].astype(int) - photo_rgb[car]).max() <= 1  # the car untouched
    page.click("label[for='bg-mode-transparent']")
    assert "checker" in page.get_attribute("#result-frame", "class")
    assert console.unexpected() == []


def cutout_after(page, action) -> np.ndarray:
    """Do `action` on the page; the RGBA cut-out it asked the server for (Chromium keeps no copy
    of a form with a file in it, so what was sent shows in what came back)."""
    with page.expect_response(lambda r: r.url.endswith("/v1/cutout"), timeout=TIMEOUT_MS) as answer:
        action()
    response = answer.value
    assert response.status == 200, response.text()
    page.wait_for_selector("#status[data-state='done']")
    return np.asarray(png_of(response.body()))


def test_edges_are_soft_unless_hard_edges_is_chosen(loaded):
    page, console, body = loaded
    soft = np.asarray(png_of(body))[..., 3]
    assert ((soft > 0) & (soft < 255)).sum() > 1000  # anti-aliased from the first cut-out on
    hard = cutout_after(page, lambda: page.check("#hard-edges"))
    assert set(np.unique(hard[..., 3])) <= {0, 255}
    assert np.array_equal(hard[..., 3] == 255, soft > 127)  # the same mask
    assert page.is_disabled("#feather")  # a feathered edge is soft: not with hard edges
    again = cutout_after(page, lambda: page.uncheck("#hard-edges"))
    assert np.array_equal(again[..., 3], soft) and page.is_enabled("#feather")
    assert console.unexpected() == []


def test_a_canvas_and_a_shadow_frame_the_car(loaded):
    page, console, _ = loaded
    assert page.is_disabled("#margin") and page.is_enabled("#mask-toggle")
    placed = cutout_after(page, lambda: page.select_option("#canvas", "1600x1200"))
    assert placed.shape == (1200, 1600, 4)
    assert page.eval_on_selector("#result-canvas", "c => [c.width, c.height]") == [1600, 1200]
    assert "onto a 1600×1200 canvas" in page.inner_text("#status")
    assert page.is_disabled("#mask-toggle")  # the overlay is for the photo's own geometry
    cutout_after(page, lambda: page.fill("#margin", "0.1"))  # a range: fill sets it, fires input
    assert page.inner_text("#margin-value") == "10%"
    standing = cutout_after(page, lambda: page.click("label[for='align-bottom']"))
    car = standing[..., 3] > 127
    rows, cols = np.flatnonzero(car.any(axis=1)), np.flatnonzero(car.any(axis=0))
    assert abs(rows[-1] - (1200 - 120)) <= 2 and cols[0] >= 158 and cols[-1] <= 1442
    shaded = cutout_after(page, lambda: page.check("#shadow"))
    floor = (slice(rows[-1] + 3, rows[-1] + 12), slice(cols[0], cols[-1]))  # just under the wheels
    assert standing[floor][..., 3].mean() < 1 and shaded[floor][..., 3].mean() > 10  # its floor shadow
    # back to the photo's own size for the tests after this one
    cutout_after(page, lambda: page.uncheck("#shadow"))
    cutout_after(page, lambda: page.click("label[for='align-center']"))
    cutout_after(page, lambda: page.fill("#margin", "0.05"))
    back = cutout_after(page, lambda: page.select_option("#canvas", ""))  # margin and align not sent
    assert back.shape == (1280, 1918, 4)
    assert page.is_disabled("#margin") and page.is_enabled("#mask-toggle")
    assert console.unexpected() == []


def test_feather_rerequests_a_soft_edge(loaded):
    page, console, _ = loaded
    with page.expect_response(lambda r: r.url.endswith("/v1/cutout"), timeout=TIMEOUT_MS) as answer:
        page.fill("#feather", "8")  # a range input: fill sets it and fires input
    assert answer.value.status == 200
    alpha = np.asarray(png_of(answer.value.body()))[..., 3]
    assert ((alpha > 0) & (alpha < 255)).sum() > 1000  # a soft edge now
    assert page.inner_text("#feather-value") == "8 px"
    page.wait_for_selector("#status[data-state='done']")
    assert console.unexpected() == []


def test_screenshots_at_laptop_and_phone_widths(loaded):
    page, console, _ = loaded
    ARTIFACTS.mkdir(exist_ok=True)
    page.check("#mask-toggle")
    page.set_viewport_size({"width": 1366, "height": 768})
    laptop = ARTIFACTS / "web-page.png"
    page.screenshot(path=str(laptop), full_page=True)
    # wide: the panes side by side
    boxes = [page.locator(".pane").nth(i).bounding_box() for i in range(2)]
    assert boxes[1]["x"] > boxes[0]["x"] + boxes[0]["width"] - 1
    page.uncheck("#mask-toggle")
    page.set_viewport_size({"width": 390, "height": 844})
    phone = ARTIFACTS / "web-page-phone.png"
    page.screenshot(path=str(phone), full_page=True)
    # narrow: stacked, and nothing wider than the screen
    boxes = [page.locator(".pane").nth(i).bounding_box() for i in range(2)]
    assert boxes[1]["y"] >= boxes[0]["y"] + boxes[0]["height"] - 1
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for path, width in ((laptop, 1366), (phone, 390)):
        assert path.stat().st_size > 10_000
        with Image.open(path) as shot:
            assert shot.width == width
    page.set_viewport_size({"width": 1366, "height": 768})
    assert console.unexpected() == []


@contextmanager
def fresh_upload(browser, server, photo: Path):
    """A new laptop-sized page with `photo` uploaded: (page, console, the /v1/cutout response)."""
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        console = Console(page)
        page.goto(server.url + "/")
        with page.expect_response(lambda r: r.url.endswith("/v1/cutout")) as answer:
            page.set_input_files("#file-input", str(photo))
        yield page, console, answer.value
    finally:
        context.close()


def test_a_file_that_is_not_an_image_shows_the_servers_message(browser, server, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("these are my notes, not a photo\n")
    with fresh_upload(browser, server, fake) as (page, console, response):
        assert response.status == 415
        message = response.json()["error"]["message"]
        assert "not an image" in message
        page.wait_for_selector("#error", state="visible")
        assert message in page.inner_text("#error-message")
        assert page.get_attribute("#status", "data-state") == "error"
        assert page.is_disabled("#download")
        # Chromium itself logs the refused request; nothing else may appear
        assert console.unexpected(allowed=(r"status of 415",)) == []


def test_a_photo_with_no_car_shows_a_warning(browser, server, tmp_path):
    from test_anywhere import landscape
    hills = tmp_path / "hills.png"
    Image.fromarray(landscape()).save(hills)
    with fresh_upload(browser, server, hills) as (page, console, response):
        assert response.status == 200
        page.wait_for_selector("#warning", state="visible")
        assert "no car" in page.inner_text("#warning-message")
        assert "by the general model" in page.inner_text("#status")
        assert console.unexpected() == []


def test_the_api_docs_render_offline(browser, server):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        console = Console(page)
        page.goto(server.url + "/docs")
        page.get_by_text("/v1/cutout", exact=True).wait_for()  # Swagger UI drew the operations
        assert page.locator(".opblock").count() >= 4
        assert console.unexpected() == []
    finally:
        context.close()
