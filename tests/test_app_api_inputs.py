"""Images and class names sent to the live app through its API (gradio_client; conftest's app_server):
every bad input gets a clear message for the visitor, and the next good request still works."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PHOTO, assert_still_serving, expect_error, results, segment
from PIL import Image
from test_webapp_inputs import header_only

from webapp import FIRST_MAPS, MAX_CLASSES, MAX_TEXT_CHARS, TINY_ZS
from webapp.images import MAX_SIDE

# ---------------------------------------------------------------------------------------------- images
BAD_IMAGES = {
    "empty.png": (b"", "empty (0 bytes)"),
    "notes.png": (b"these are notes, not pixels\n" * 10, "not an image"),
    "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not an image"),
    "truncated.jpg": (PHOTO.read_bytes()[:3000], "corrupt or truncated"),
    "huge.png": (header_only("PNG", 20000, 20000), "20,000x20,000"),
    "huge.gif": (header_only("GIF", 9000, 7000), "9,000x7,000"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_files_give_a_clear_message(app_client, small_image, tmp_path, name):
    data, match = BAD_IMAGES[name]
    path = tmp_path / name
    path.write_bytes(data)
    message = expect_error(app_client, path, match=match)
    assert str(tmp_path) not in message and os.environ["GRADIO_TEMP_DIR"] not in message  # no server paths
    assert_still_serving(app_client, small_image)


def test_upload_size_limit(app_server, app_client, small_image):
    import httpx

    too_big = b"\x00" * (30 * 1024 * 1024 + 1)
    files = {"files": ("big.png", too_big, "image/png")}
    r = httpx.post(app_server[1] + "gradio_api/upload", files=files, timeout=60)
    assert r.status_code == 413, r.text
    assert_still_serving(app_client, small_image)


def _make(kind: str, path: Path) -> Path:
    rgb = np.asarray(Image.open(PHOTO).resize((160, 120)))
    if kind == "grayscale":
        Image.fromarray(rgb).convert("L").save(path)
    elif kind == "rgba":
        a = np.dstack([rgb, np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))])
        Image.fromarray(a, "RGBA").save(path)
    elif kind == "16-bit":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path)
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path, "JPEG")
    elif kind == "palette":
        Image.fromarray(rgb).convert("P").save(path)
    else:
        Image.fromarray(rgb).save(path, kind.upper())
    return path


@pytest.mark.parametrize("kind,suffix", [
    ("grayscale", "png"), ("rgba", "png"), ("16-bit", "png"), ("cmyk", "jpg"), ("palette", "gif"),
    ("webp", "webp"), ("tiff", "tif"), ("bmp", "bmp"),
])
def test_any_image_mode_works(app_client, tmp_path, kind, suffix):
    res = results(segment(app_client, _make(kind, tmp_path / f"{kind}.{suffix}"), "sky, road"))
    assert res["image"]["size"] == [120, 160] and sum(c["pixels"] for c in res["classes"]) == 120 * 160


def test_exif_rotated_photo_is_upright(app_client, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (80, 40), (200, 30, 30)).save(path, exif=exif.tobytes())
    out = segment(app_client, path, "sky, road")
    assert results(out)["image"]["original_size"] == [80, 40] and Image.open(out[2]).size == (40, 80)


def test_huge_jpeg_is_decoded_small_and_labelled_at_the_segmented_size(app_client, tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("L", (20000, 20000), 128).save(path, quality=50)  # ~4.7 MB, decoded at 1/8 scale
    t0 = time.perf_counter()
    out = segment(app_client, path, "sky, road")
    res = results(out)
    assert res["image"]["original_size"] == [20000, 20000] and max(res["image"]["size"]) == MAX_SIDE
    assert "Segmented at 1024×1024 (the upload is 20000×20000)." in out[4]  # a quiet line, not a toast
    assert res["label_map"]["size"] == [1024, 1024]  # above 25 MP: the segmented size, and the JSON says so
    assert time.perf_counter() - t0 < 60


def test_large_png_label_map_is_at_the_upload_size(app_client, tmp_path):
    path = tmp_path / "large.png"
    Image.open(PHOTO).resize((2000, 1500), Image.Resampling.NEAREST).save(path, compress_level=1)
    out = segment(app_client, path, "sky, road")
    res = results(out)
    assert res["image"]["size"] == [768, 1024] and Image.open(out[2]).size == (2000, 1500)


def test_base64_data_url_images(app_server, small_image):
    """Images sent inline as data URLs (no upload) take the same checked path."""
    import base64

    import httpx

    url = app_server[1]
    good = "data:image/png;base64," + base64.b64encode(small_image.read_bytes()).decode()
    for data_url, expected in ((good, "event: complete"), ("data:image/png;base64,!!!!", "empty (0 bytes)"),
                               ("data:image/png;base64," + base64.b64encode(b"GIF89a junk").decode(),
                                "not an image")):
        data = [{"url": data_url, "meta": {"_type": "gradio.FileData"}}, "sky, sea", TINY_ZS, 0.5,
                "auto", "closest", 0.2]
        event = httpx.post(f"{url}gradio_api/call/segment", json={"data": data}).json()["event_id"]
        stream = httpx.get(f"{url}gradio_api/call/segment/{event}", timeout=60).text
        assert expected in stream, stream[:500]


def test_no_image_and_too_many_prompts(app_client, small_image):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Upload an image"):
        app_client.predict(None, "sky", api_name="/segment")
    expect_error(app_client, small_image, ", ".join(f"thing {i}" for i in range(80)), templates="imagenet",
                 match="texts to encode")


# ----------------------------------------------------------------------------------------- class names
@pytest.mark.parametrize("text", ["", "   ", ", ;\n ,", "\x00\x07"])
def test_empty_class_list(app_client, small_image, text):
    expect_error(app_client, small_image, text, match="at least one class name")


def test_repeats_and_separators(app_client, small_image):
    out = segment(app_client, small_image, "sky; Sky\ttree\nsky,  tree ")
    assert [c["name"] for c in results(out)["classes"]] == ["sky", "tree"]
    assert "Merged 3 repeated class name" in out[4]  # a quiet note in the status


def test_hundreds_of_classes(app_client, small_image):
    names = [f"object {i}" for i in range(260)]
    out = segment(app_client, small_image, ", ".join(names))
    res = results(out)
    assert [c["name"] for c in res["classes"]] == names and len(out[1]) == FIRST_MAPS
    lab = Image.open(out[2])  # > 255 classes: a 16-bit PNG
    assert lab.mode.startswith("I") and np.asarray(lab).max() < 260
    assert res["info"]["template_set"] == "single"  # "auto": one prompt a class above 40 classes


def test_class_name_limits(app_client, small_image):
    too_many = ", ".join(f"c{i}" for i in range(MAX_CLASSES + 1))
    expect_error(app_client, small_image, too_many, match="limit is 512")
    expect_error(app_client, small_image, "sky, " + "very " * 100 + "long", match="characters long")
    expect_error(app_client, small_image, "a" * (MAX_TEXT_CHARS + 1), match="characters long")
    assert_still_serving(app_client, small_image)


def test_unicode_and_markdown_in_class_names(app_client, small_image):
    names = ["猫", "🐶 dog", "café", "*bold* [link](x)"]
    out = segment(app_client, small_image, "猫, 🐶 dog, cafe\u0301, *bold* [link](x)")
    assert [c["name"] for c in results(out)["classes"]] == names
    assert "[link](x)" not in out[4] or "\\[link\\]" in out[4]  # shown literally in the status


def test_class_name_longer_than_the_text_context_is_a_note(app_client, small_image):
    notes = results(segment(app_client, small_image, "sky, " + "猫" * 150))["notes"]
    assert any("truncated" in n for n in notes)


def test_class_box_is_never_read_as_a_file_or_dataset(app_client, small_image):
    for text in ("/etc/passwd", "ade20k"):
        assert [c["name"] for c in results(segment(app_client, small_image, text))["classes"]] == [text]




@pytest.mark.parametrize(("values", "match"), [
    ({"templates": "bogus"}, "templates must be one of auto, single, simple, imagenet"),
    ({"unmatched": "nope"}, "unmatched must be one of closest, background, threshold"),
    ({"opacity": "abc"}, "opacity must be a number from 0 to 1"),
    ({"threshold": 7}, "threshold must be a number from 0 to 1"),
    ({"model": 3}, "model must be the name of a model"),
])
def test_an_invalid_api_value_is_one_log_line_with_the_reason(app_client, small_image, values, match, caplog,
                                                             capfd):
    """Values the page never sends are checked by the app (not by Gradio's components, which print a
    traceback): the visitor reads the reason, the log gets one line."""
    import logging

    with caplog.at_level(logging.INFO, logger="denseclip.app"):
        expect_error(app_client, small_image, match=match, **values)
    lines = [r.getMessage() for r in caplog.records if r.name == "denseclip.app"]
    assert len(lines) == 1 and match in lines[0]
    assert "Traceback" not in capfd.readouterr().err
