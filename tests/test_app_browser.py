"""The app end to end in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright):
the first screen on a desktop and a phone (the Segment button and the examples without scrolling), an
example click that runs, reading a result (every class's share, the enlarged score map in view, the
pixel readout and "find more like this"), slips that keep the last result, the threshold mode, the model
hint, dark mode, and the Detect tab on a phone.

Outside CI the tests are skipped when no browser is installed; with CI set they fail instead, so a CI
machine without Chromium cannot pass silently (`make test` installs it: the Makefile's browser target).
Screenshots (desktop 1440x900, phone 390x844, dark, the Detect tab) are saved in each test's tmp dir,
and copied to DENSECLIP_SCREENSHOT_DIR when that is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="denseclip-gradio-test-"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from conftest import load_app  # noqa: E402

from webapp import AppConfig  # noqa: E402
from webapp.drawing import TAG_TEXT_SHARE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "coffee.jpg"
NAMES = ["coffee", "cup", "saucer", "spoon", "wooden table"]
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STATUS = "document.querySelector('#time-output').innerText"
DESKTOP, PHONE = (1440, 900), (390, 844)

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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.build_app(AppConfig(tiny=True, host="127.0.0.1", port=port))
    _, url, _ = app.serve(demo, prevent_thread_lock=True, quiet=True)
    deadline = time.time() + 60
    while not demo.registry.loaded(demo.registry.listed[0]) and time.time() < deadline:
        time.sleep(0.2)  # the background start-up has loaded the default model
    try:
        with sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
            try:
                yield chromium, url
            finally:
                chromium.close()
    finally:
        demo.stop_background.set()
        demo.close()


def open_page(browser, size=DESKTOP, dark=False):
    chromium, url = browser
    page = chromium.new_page(viewport={"width": size[0], "height": size[1]},
                             color_scheme="dark" if dark else "light")
    page.set_default_timeout(60_000)
    page.goto(url + ("?__theme=dark" if dark else ""))
    page.wait_for_selector("#run-button")
    page.wait_for_function("document.querySelector('#model-status').innerText.startsWith('Ready')")
    return page


def wait_done(page):
    page.wait_for_function(f"{STATUS}.startsWith('Waited') && document.querySelectorAll("
                           f"'#coverage-output .dc-name').length > 0")
    page.wait_for_timeout(400)  # the page brings the answer into view (a phone) once it has settled


def run(page, image=PHOTO, names=", ".join(NAMES)):
    page.set_input_files("#image-input input[type=file]", str(image))
    page.wait_for_selector("#image-input img")
    page.fill("#classes-input textarea", names)
    page.click("#run-button")
    wait_done(page)


def screenshot(page, tmp_path, name, full_page=True):
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=full_page)
    if os.environ.get("DENSECLIP_SCREENSHOT_DIR"):
        out = Path(os.environ["DENSECLIP_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / shot.name)
    return shot


def in_view(page, selector) -> bool:
    box = page.locator(selector).first.bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] and \
        box["x"] >= 0 and box["x"] + box["width"] <= size["width"]


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_first_screen_says_what_to_do_and_an_example_runs(browser, tmp_path, size):
    page = open_page(browser, size)
    assert in_view(page, "#run-button") and in_view(page, "#examples .gallery-item")  # no scrolling
    assert page.evaluate("document.scrollingElement.scrollWidth") <= size[0]  # nothing wider than the page
    assert "Find things in a photo by naming them" in page.inner_text("#title")
    text = page.inner_text("body")
    for operator_words in ("DENSECLIP_", "--tiny", "HF_HUB_OFFLINE", "server log", "Operator"):
        assert operator_words not in text
    screenshot(page, tmp_path, f"first-screen-{size[0]}", full_page=False)
    page.locator("#examples .gallery-item").first.click()  # runs it: no Segment press needed
    wait_done(page)
    assert "Processed in" in page.evaluate(STATUS)
    assert "coffee" in page.input_value("#classes-input textarea")
    page.wait_for_timeout(500)
    assert page.locator("#segmentation-output").bounding_box()["y"] < size[1]  # the answer comes into view
    screenshot(page, tmp_path, f"example-{size[0]}", full_page=False)


def test_desktop_read_the_result(browser, tmp_path):
    page = open_page(browser)
    page.set_input_files("#image-input input[type=file]", str(PHOTO))
    page.wait_for_function("document.querySelector('#image-note').innerText.includes('600×400 JPEG')")
    run(page)
    status = page.evaluate(STATUS)
    assert "(queue and processing)" in status and "Processed in" in status and "untrained" in status
    assert "5 classes" in status
    legend = [t.strip() for t in page.locator("#coverage-output .dc-name").all_inner_texts()]
    assert sorted(legend) == sorted(NAMES)  # every class, those at 0% too
    assert "Share of the picture's pixels" in page.inner_text("#coverage-output")
    page.wait_for_function("document.querySelectorAll('#scoremaps-output .thumbnail-item img').length === 4")
    assert "% of pixels" in page.inner_text("#scoremaps-output")  # the first maps; any other one on demand
    page.locator("#segmentation-output img").click(position={"x": 300, "y": 200})  # what is here?
    page.wait_for_function("document.querySelector('#pixel-readout').innerText.startsWith('At (')")
    readout = page.inner_text("#pixel-readout")
    assert "cosine similarity" in readout and any(f"{n} " in readout for n in NAMES), readout
    page.wait_for_selector("#like-output img")  # find more like this
    assert "More like this" in page.inner_text("#like-output")
    before = page.locator("#segmentation-output img").get_attribute("src")
    slider = page.locator("#opacity-input input[type=range]")
    slider.fill("0.9")
    slider.dispatch_event("pointerup")  # the slider's release redraws without running the model again
    page.wait_for_function("s => document.querySelector('#segmentation-output img').src !== s", arg=before)
    assert screenshot(page, tmp_path, "desktop").stat().st_size > 100_000
    page.fill("#classes-input textarea", "sky, road")
    page.click("#run-button")
    page.wait_for_function(f"{STATUS}.includes('2 classes')")
    page.wait_for_selector("#like-output img", state="detached")  # a new result: the old point's map goes


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_enlarged_score_map_opens_where_the_visitor_looks(browser, size):
    page = open_page(browser, size)
    run(page)
    thumb = page.locator("#scoremaps-output .thumbnail-item").nth(3)
    thumb.scroll_into_view_if_needed()
    thumb.click()
    page.wait_for_timeout(500)
    big = page.locator("#scoremaps-output img").first.bounding_box()
    assert big["y"] >= -5 and big["y"] + big["height"] <= size[1] + 5, big  # the large map is on screen


def test_a_slip_keeps_the_last_result(browser, tmp_path):
    page = open_page(browser)
    run(page)
    picture = page.locator("#segmentation-output img").get_attribute("src")
    legend = page.inner_text("#coverage-output")
    page.fill("#classes-input textarea", "")
    page.click("#run-button")
    page.wait_for_function(f"{STATUS}.includes('did not finish')")
    assert "at least one class name" in page.inner_text("body")  # the message, in the visitor's terms
    assert page.locator("#segmentation-output img").get_attribute("src") == picture
    assert page.inner_text("#coverage-output") == legend  # the chart and the picture agree
    assert "Error" not in page.inner_text("#segmentation-output")  # no error badge over the result
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are notes, not pixels\n" * 10)
    page.set_input_files("#image-input input[type=file]", str(bad))
    page.wait_for_function("document.querySelector('#image-note').innerText.includes('not an image')")
    page.fill("#classes-input textarea", "sky, road")
    page.click("#run-button")
    page.wait_for_function(f"{STATUS}.includes('did not finish')")
    assert page.locator("#segmentation-output img").get_attribute("src") == picture
    page.locator("#image-input button[aria-label='Remove Image']").first.click()
    run(page, names="sky")
    assert "1 class ·" in page.evaluate(STATUS) and "did not finish" not in page.evaluate(STATUS)


def test_threshold_mode_keeps_part_of_the_picture_and_says_how_before_a_run(browser):
    page = open_page(browser)
    page.get_by_text("More options").click()
    page.get_by_label("stay unlabelled where the scores are low").check()
    page.wait_for_selector("#threshold-input input[type=range]")
    hint = page.inner_text("#threshold-input")
    assert "0 labels every pixel" in hint  # readable before any run
    run(page)
    status = page.evaluate(STATUS)
    assert "largest: none" not in status and "unlabelled" in page.inner_text("#coverage-output")


def test_presets_and_the_model_hint(browser):
    page = open_page(browser)
    assert "Finds any names you type" in page.inner_text("#model-input")
    page.locator("#model-input input").click()
    page.get_by_role("option", name="Tiny DenseCLIP (untrained)").click()
    page.wait_for_function("document.querySelector('#model-input').innerText.includes('its own classes')")
    page.fill("#classes-input textarea", "my own; names")
    page.get_by_label("Pascal VOC (21)").check()
    page.wait_for_function("document.querySelector('#classes-input textarea').value.includes('dining table')")
    assert "diningtable" not in page.input_value("#classes-input textarea")
    page.get_by_label("Custom").check()
    page.wait_for_function("document.querySelector('#classes-input textarea').value === 'my own; names'")


def test_dark_mode_follows_the_page(browser, tmp_path):
    page = open_page(browser, dark=True)
    page.get_by_text("More options").click()
    page.get_by_label("Refine edges (PAMR, slower)").check()
    run(page)
    assert "Edges refined with PAMR" in page.evaluate(STATUS)
    luminance = """el => { const [r, g, b] = getComputedStyle(el).color.match(/\\d+/g).map(Number);
                           return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255; }"""
    assert page.locator("#coverage-output .dc-name").first.evaluate(luminance) > 0.6  # light text
    assert page.locator("#time-output").evaluate(luminance) > 0.6
    screenshot(page, tmp_path, "dark")


def test_every_score_map_is_reachable(browser):
    page = open_page(browser)
    run(page, names=", ".join(f"thing {i}" for i in range(14)) + ", last one")
    page.wait_for_function("document.querySelectorAll('#scoremaps-output .thumbnail-item img').length === 4")
    page.locator("#scoremap-class input").click()
    page.get_by_role("option", name="last one").click()
    page.wait_for_function("document.querySelector('#scoremaps-output').innerText.includes('last one ·')")


def test_the_detect_tab_explains_itself_and_its_tags_read_on_a_phone(browser, tmp_path):
    page = open_page(browser, PHONE)
    page.get_by_role("tab", name="Detect objects").click()
    assert "draws a box, a name and a score" in page.inner_text("#detect-intro")
    field = page.locator("#detector-input input")
    assert field.evaluate("el => el.scrollWidth <= el.clientWidth")  # the detector's name is not cut
    page.set_input_files("#detect-image-input input[type=file]", str(PHOTO))
    page.wait_for_function("document.querySelector('#detect-image-note').innerText.includes('600×400 JPEG')")
    page.click("#detect-button")
    page.wait_for_function("document.querySelector('#detect-status').innerText.startsWith('Waited')")
    assert "detections scoring 0.30 or more" in page.inner_text("#detect-status")
    page.wait_for_function("document.querySelectorAll('#detections-table tbody tr').length > 0")
    img = page.locator("#detections-output img")
    *natural, shown = img.evaluate("el => [el.naturalWidth, el.naturalHeight, el.clientWidth]")
    tag_text = max(12, -(-max(natural) * TAG_TEXT_SHARE // 1))  # drawing.draw_detections' size rule
    assert tag_text * shown / natural[0] >= 11  # readable on the phone
    assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE[0]  # the table scrolls
    screenshot(page, tmp_path, "detect-phone")
