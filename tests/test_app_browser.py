"""The app end to end in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright):
layout on a desktop, a phone and in dark mode, and what a visitor does (upload, type, presets, run,
click the picture, pick a score map, move the opacity, a bad file then a good one; detect objects).

Outside CI the tests are skipped when no browser is installed; with CI set they fail instead, so a CI
machine without Chromium cannot pass silently (`make test` installs it: the Makefile's browser target).
Full-page screenshots (desktop 1440x900, phone 390x844, dark, the Detect tab) are saved in each test's
tmp dir, and copied to DENSECLIP_SCREENSHOT_DIR when that is set.
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
from conftest import load_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "coffee.jpg"
NAMES = ["coffee", "cup", "saucer", "spoon", "wooden table"]
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STATUS = "document.querySelector('#time-output').innerText"

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
        sync_playwright = None
        missing = "the playwright Python package is not installed (requirements-dev.txt)"
    path = chromium_path()
    if path is None and missing is None:
        missing = ("no Chromium at /usr/bin/chromium (apt-get install -y chromium; `make browser` does it "
                   "as root)")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the browser test cannot run: {missing}")
        pytest.skip(missing)
    return sync_playwright, path


@pytest.fixture(scope="module")
def browser():
    sync_playwright, path = require_browser()
    app = load_app()
    demo = app.build_app(tiny=True, preload=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # check_models: test_app_api checks the start-up model check
    _, url, _ = app.serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True, check_models=False)
    try:
        with sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
            try:
                yield chromium, url
            finally:
                chromium.close()
    finally:
        demo.close()


def open_page(browser, width=1440, height=900, dark=False):
    chromium, url = browser
    page = chromium.new_page(viewport={"width": width, "height": height},
                             color_scheme="dark" if dark else "light")
    page.set_default_timeout(60_000)
    page.goto(url + ("?__theme=dark" if dark else ""))
    page.wait_for_selector("#run-button")
    return page


def run(page, image=PHOTO, names=", ".join(NAMES)):
    page.set_input_files("#image-input input[type=file]", str(image))
    page.wait_for_selector("#image-input img")
    page.fill("#classes-input textarea", names)
    page.click("#run-button")
    page.wait_for_function(f"{STATUS}.startsWith('Waited')")


def screenshot(page, tmp_path, name):
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("DENSECLIP_SCREENSHOT_DIR"):
        out = Path(os.environ["DENSECLIP_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / shot.name)
    return shot


def whole_gallery_visible(page) -> bool:
    return page.evaluate("() => { const w = document.querySelector('#scoremaps-output .grid-wrap');"
                         " return !!w && w.scrollHeight <= w.clientHeight + 1; }")


def test_desktop_run_read_the_result(browser, tmp_path):
    page = open_page(browser)
    assert "untrained" in page.inner_text("#model-status")
    page.set_input_files("#image-input input[type=file]", str(PHOTO))
    page.wait_for_function("document.querySelector('#image-note').innerText.includes('600×400 JPEG')")
    run(page)
    status = page.evaluate(STATUS)
    assert "(queue and processing)" in status and "Processed in" in status and "untrained" in status
    legend = [t.strip() for t in page.locator("#coverage-output .dc-name").all_inner_texts()]
    assert legend and set(legend) <= set(NAMES)
    page.wait_for_function("document.querySelectorAll('#scoremaps-output .thumbnail-item img').length === 5")
    assert whole_gallery_visible(page)  # every map on the page, none behind an inner scroll bar
    assert "saucer ·" in page.inner_text("#scoremaps-output")
    page.locator("#segmentation-output img").click(position={"x": 300, "y": 200})  # what is here?
    page.wait_for_function("document.querySelector('#pixel-readout').innerText.startsWith('At (')")
    readout = page.inner_text("#pixel-readout")
    assert "cosine similarity" in readout and any(f"{n} " in readout for n in NAMES), readout
    before = page.locator("#segmentation-output img").get_attribute("src")
    slider = page.locator("#opacity-input input[type=range]")
    slider.fill("0.9")
    slider.dispatch_event("pointerup")  # the slider's release redraws without running the model again
    page.wait_for_function("s => document.querySelector('#segmentation-output img').src !== s", arg=before)
    assert screenshot(page, tmp_path, "desktop").stat().st_size > 100_000


def test_phone_layout(browser, tmp_path):
    page = open_page(browser, 390, 844)
    run(page)
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390  # nothing wider than the phone
    rows = page.locator("#coverage-output .dc-legend")
    assert rows.bounding_box()["height"] > 40 and rows.bounding_box()["width"] > 250  # the chart shows
    assert whole_gallery_visible(page)
    seg = page.locator("#segmentation-output img").bounding_box()
    assert seg["width"] > 300 and seg["height"] > 150
    examples = page.get_by_text("Examples (public-domain photos)").bounding_box()
    assert seg["y"] < examples["y"]  # the answer comes right after the Segment button, before the examples
    screenshot(page, tmp_path, "phone")


def test_dark_mode_follows_the_page(browser, tmp_path):
    page = open_page(browser, dark=True)
    page.get_by_text("Advanced").click()
    page.get_by_label("Refine edges (PAMR, slower)").check()
    run(page)
    assert "Edges refined with PAMR" in page.evaluate(STATUS)
    page.wait_for_selector("#coverage-output .dc-name")
    luminance = """el => { const [r, g, b] = getComputedStyle(el).color.match(/\\d+/g).map(Number);
                           return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255; }"""
    assert page.locator("#coverage-output .dc-name").first.evaluate(luminance) > 0.6  # light text
    assert page.locator("#time-output").evaluate(luminance) > 0.6
    screenshot(page, tmp_path, "dark")


def test_examples_presets_and_the_nothing_here_control(browser):
    page = open_page(browser)
    page.locator("table tbody tr").filter(has_text="launch tower").first.click()  # a real photo
    page.wait_for_function("document.querySelector('#classes-input textarea').value.includes('launch tower')")
    page.wait_for_function("document.querySelector('#image-note').innerText.includes('640×427 JPEG')")
    page.fill("#classes-input textarea", "my own; names")
    page.get_by_label("Pascal VOC (21)").check()
    page.wait_for_function("document.querySelector('#classes-input textarea').value.includes('dining table')")
    assert "diningtable" not in page.input_value("#classes-input textarea")
    page.get_by_label("Custom").check()
    page.wait_for_function("document.querySelector('#classes-input textarea').value === 'my own; names'")
    page.get_by_label("stay unlabelled below a score").check()
    page.wait_for_selector("#threshold-input input[type=range]")


def test_a_bad_file_is_flagged_on_upload_and_the_next_run_clears_the_error(browser, tmp_path):
    page = open_page(browser)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are notes, not pixels\n" * 10)
    page.set_input_files("#image-input input[type=file]", str(bad))
    page.wait_for_function("document.querySelector('#image-note').innerText.includes('not an image')")
    page.fill("#classes-input textarea", "sky, road")
    page.click("#run-button")
    page.wait_for_function(f"{STATUS}.includes('did not finish')")
    page.locator("#image-input button[aria-label='Remove Image']").first.click()
    run(page, names="sky, road")
    assert "2 classes" in page.evaluate(STATUS) and "did not finish" not in page.evaluate(STATUS)


def test_every_score_map_is_reachable(browser):
    page = open_page(browser)
    run(page, names=", ".join(f"thing {i}" for i in range(14)) + ", last one")
    page.wait_for_function("document.querySelectorAll('#scoremaps-output .thumbnail-item img').length === 12")
    page.locator("#scoremap-class input").click()
    page.get_by_role("option", name="last one").click()
    page.wait_for_function("document.querySelector('#scoremaps-output').innerText.includes('last one ·')")


def test_the_detect_tab_runs_a_detector(browser, tmp_path):
    page = open_page(browser)
    page.get_by_role("tab", name="Detect objects").click()
    page.set_input_files("#detect-image-input input[type=file]", str(PHOTO))
    page.wait_for_function("document.querySelector('#detect-image-note').innerText.includes('600×400 JPEG')")
    page.click("#detect-button")
    page.wait_for_function("document.querySelector('#detect-status').innerText.startsWith('Waited')")
    status = page.inner_text("#detect-status")
    assert "detections scoring 0.30 or more" in status and "untrained" in status
    page.wait_for_function("document.querySelectorAll('#detections-table tbody tr').length > 0")
    assert "red box" in page.inner_text("#detections-table")
    picture = page.locator("#detections-output img").bounding_box()
    assert picture["width"] > 300 and picture["height"] > 150
    screenshot(page, tmp_path, "detect")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the table scrolls, not the page
    page.wait_for_function("document.scrollingElement.scrollWidth <= 390")
