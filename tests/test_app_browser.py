"""The app end to end in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Outside CI the test is skipped when no browser is installed; with CI set it fails instead, so a CI
machine without Chromium cannot pass silently (`make test` installs it: the Makefile's browser target).
A screenshot of the page after a run is saved in the test's tmp dir (and copied to
DENSECLIP_SCREENSHOT_DIR when that is set).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="denseclip-gradio-test-"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from conftest import load_app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "city_street.jpg"
NAMES = ["sky", "building", "road", "car", "person"]
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_browser():
    """(playwright's sync API, chromium path); in CI a missing piece is a failure, elsewhere a skip."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright, missing = None, "the playwright Python package is not installed (requirements-dev.txt)"
    path = chromium_path()
    if path is None and missing is None:
        missing = "no Chromium at /usr/bin/chromium (apt-get install -y chromium; `make browser` does it as root)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the browser test cannot run: {missing}")
        pytest.skip(missing)
    return sync_playwright, path




@pytest.fixture(scope="module")
def browser_page():
    sync_playwright, path = require_browser()
    app = load_app()
    demo = app.build_app(tiny=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = app.serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(url)
                page.wait_for_selector("#run-button")
                yield page
            finally:
                browser.close()
    finally:
        demo.close()


def test_upload_type_run_and_see_the_segmentation(browser_page, tmp_path):
    page = browser_page
    assert "untrained" in page.inner_text("#model-status")
    page.set_input_files("#image-input input[type=file]", str(EXAMPLE))
    page.wait_for_selector("#image-input img")
    page.fill("#classes-input textarea", ", ".join(NAMES))
    page.click("#run-button")
    page.wait_for_selector("#segmentation-output img")
    page.wait_for_function("document.querySelectorAll('#scoremaps-output img').length >= 5")
    page.wait_for_function("document.querySelector('#time-output').innerText.includes(' s ·')")

    legend = [t.strip() for t in page.locator("#segmentation-output .legend-item").all_inner_texts()]
    assert legend and set(legend) <= set(NAMES), legend
    captions = page.inner_text("#scoremaps-output")
    for name in NAMES:
        assert f"{name} ·" in captions, captions
    assert "untrained" in page.inner_text("#time-output")
    assert page.locator("#json-output a, #json-output [download]").count() >= 1 or \
        "results.json" in page.inner_text("#json-output")

    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
    if os.environ.get("DENSECLIP_SCREENSHOT_DIR"):
        out = Path(os.environ["DENSECLIP_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "app.png")


def test_presets_fill_the_class_box(browser_page):
    page = browser_page
    page.get_by_label("Pascal VOC (21)").check()
    page.wait_for_function("document.querySelector('#classes-input textarea').value.startsWith('background, aeroplane')")
    page.fill("#classes-input textarea", "sky, road")
    page.wait_for_function("document.querySelector('#preset-input input[value=\"Custom\"]').checked")


def test_a_bad_file_shows_a_message_and_the_next_run_works(browser_page, tmp_path):
    page = browser_page
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are notes, not pixels\n" * 10)
    page.locator("#image-input button[aria-label='Remove Image']").first.click()
    page.set_input_files("#image-input input[type=file]", str(bad))
    page.fill("#classes-input textarea", "sky, road")
    page.click("#run-button")
    page.wait_for_selector("text=not an image")
    page.locator("#image-input button[aria-label='Remove Image']").first.click()
    page.set_input_files("#image-input input[type=file]", str(EXAMPLE))
    page.wait_for_selector("#image-input img")
    page.click("#run-button")
    page.wait_for_function("document.querySelector('#time-output').innerText.includes('2 classes')")


def test_examples_load_and_the_opacity_slider_recolours(browser_page):
    page = browser_page
    page.locator("table tbody tr").filter(has_text="sidewalk").first.click()
    page.wait_for_function("document.querySelector('#classes-input textarea').value.includes('traffic light')")
    page.click("#run-button")
    page.wait_for_function("document.querySelector('#time-output').innerText.includes('8 classes')")
    masks = page.locator("#segmentation-output img.mask")
    before = masks.evaluate_all("els => els.map(e => e.src)")
    slider = page.locator("#opacity-input input[type=range]")
    slider.fill("0.9")
    slider.dispatch_event("pointerup")  # the slider's release event re-colours without re-running the model
    page.wait_for_function("srcs => [...document.querySelectorAll('#segmentation-output img.mask')]"
                           ".some((e, i) => e.src !== srcs[i])", arg=before)
