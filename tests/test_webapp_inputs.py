"""webapp's handling of what visitors send, without Gradio: image headers and refusals (time and memory
bounded in a subprocess), decoding, the class-name box and the preset lists."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webapp import classes, images
from webapp.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "coffee.jpg"


# ---------------------------------------------------------------------------------- cheap big images
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def black_png(w: int, h: int, rows: int = 100) -> bytes:
    """A valid w x h black RGB PNG of about 1 MB however large, built in milliseconds: one deflate block
    of `rows` zero rows, ended by a full flush so that it can be repeated, and the stream's checksum
    (adler32 of n zero bytes: a = 1, b = n mod 65521)."""
    assert h % rows == 0
    block = b"\x00" * ((1 + 3 * w) * rows)  # each row: filter byte 0, then RGB zeros
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    adler = ((len(block) * (h // rows)) % 65521) << 16 | 1
    idat = b"\x78\xda" + body * (h // rows) + end + struct.pack(">I", adler)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def uniform_webp(w: int, h: int) -> bytes:
    """A valid w x h lossless WebP of one colour (38 bytes): a 4x4 one encoded by Pillow, its size
    fields rewritten (a one-colour lossless bitstream does not depend on the size)."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (90, 120, 200)).save(buf, "WEBP", lossless=True)
    data = bytearray(buf.getvalue())
    i = data.index(b"VP8L") + 8
    assert data[i] == 0x2F
    bits = int.from_bytes(data[i + 1:i + 5], "little") & ~((1 << 28) - 1)
    data[i + 1:i + 5] = (bits | (w - 1) | ((h - 1) << 14)).to_bytes(4, "little")
    return bytes(data)


def header_only(fmt: str, w: int, h: int) -> bytes:
    """A file of `fmt` whose header says w x h and whose pixel data is missing or tiny."""
    if fmt == "PNG":
        return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + _chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + _chunk(b"IEND", b""))
    if fmt == "BMP":  # BITMAPINFOHEADER, 24 bits, no pixels
        return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0,
                                                                        0, 2835, 2835, 0, 0)
    if fmt == "GIF":  # logical screen and one image descriptor, then a stub of LZW data
        return (b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + b"," + struct.pack("<HHHHB", 0, 0, w, h, 0)
                + b"\x02\x02\x44\x01\x00;")
    if fmt == "TIFF":  # little-endian, one IFD: width, length, 8-bit grey, one strip of 1 byte
        tags = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (278, 4, h),
                (279, 4, 1)]
        ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
        return b"II*\x00" + struct.pack("<I", 9) + b"\x00" + ifd + b"\x00\x00\x00\x00"
    raise ValueError(fmt)


def test_black_png_is_a_valid_png(tmp_path):
    path = tmp_path / "small.png"
    path.write_bytes(black_png(64, 300, rows=50))
    arr = np.asarray(Image.open(path))
    assert arr.shape == (300, 64, 3) and arr.max() == 0  # decodes completely, checksum included


def test_uniform_webp_is_a_valid_webp(tmp_path):
    path = tmp_path / "small.webp"
    path.write_bytes(uniform_webp(70, 30))
    arr = np.asarray(Image.open(path))
    assert arr.shape == (30, 70, 3) and (arr == [90, 120, 200]).all()


# ------------------------------------------------------------------------------------------ headers
@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF", "TIFF"])
def test_large_headers_of_every_format_are_refused(tmp_path, fmt, monkeypatch):
    path = tmp_path / f"big.{fmt.lower()}"
    path.write_bytes(header_only(fmt, 9000, 7000))
    assert images.image_header(path) == images.ImageHeader(fmt, 9000, 7000)
    monkeypatch.setattr(images, "load_image", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(UserError, match=f"9,000x7,000 pixels .63 MP.. {fmt} images above 50 MP"):
        images.read_image(path)


def test_sizes_above_pillows_own_limit_are_read_from_the_header(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(header_only("PNG", 30000, 30000))  # 900 MP: Image.open itself refuses to open it
    assert images.image_header(path) == images.ImageHeader("PNG", 30000, 30000)
    path.write_bytes(header_only("PNG", 60000, 60000))
    with pytest.raises(UserError, match="60,000x60,000 pixels"):
        images.read_image(path)


REFUSAL_PROBE = """
import json, resource, sys, time
from webapp import images
from webapp.errors import UserError
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
images.image_header(sys.argv[2])  # warm up (plugins imported), on a small file
before, t0 = rss(), time.perf_counter()
try:
    images.read_image(sys.argv[1])
    message = None
except UserError as e:
    message = str(e)
print(json.dumps({"seconds": time.perf_counter() - t0, "rss_growth": rss() - before, "message": message}))
"""


@pytest.mark.parametrize("name,make,match", [
    ("huge.png", lambda: black_png(20000, 20000), "20,000x20,000 pixels .400 MP.. PNG"),
    ("huge.webp", lambda: uniform_webp(8000, 6400), "8,000x6,400 pixels .51 MP.. WEBP"),
])
def test_refusal_takes_milliseconds_and_no_pixel_memory(tmp_path, name, make, match):
    """Decoding these would take 1.2 GB / 5 s (PNG) and 0.2 GB / 1 s (WebP); refusing must not."""
    path = tmp_path / name
    path.write_bytes(make())
    small = tmp_path / "small.png"
    Image.new("RGB", (8, 8)).save(small)
    out = subprocess.run([sys.executable, "-c", REFUSAL_PROBE, str(path), str(small)], capture_output=True,
                         text=True, cwd=ROOT, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["message"] is not None and __import__("re").search(match, probe["message"]), probe
    assert probe["seconds"] < 0.5, probe
    assert probe["rss_growth"] < 30 * 2**20, probe


def test_jpegs_are_spared_and_decoded_small(tmp_path):
    Image.new("RGB", (200, 100), (10, 200, 30)).save(tmp_path / "a.jpg")
    Image.new("RGB", (200, 100), (10, 200, 30)).save(tmp_path / "a.png")
    rgb, info = images.read_image(tmp_path / "a.jpg", max_side=50, max_pixels=100)
    assert rgb.shape == (25, 50, 3)
    assert info == {"name": "a.jpg", "format": "JPEG", "original_size": [100, 200], "size": [25, 50],
                    "downscaled": True}
    with pytest.raises(UserError, match="200x100 pixels"):
        images.read_image(tmp_path / "a.png", max_pixels=100)


@pytest.mark.parametrize("data,match", [
    (b"", r"empty \(0 bytes\)"),
    (b"these are notes, not pixels\n" * 10, "not an image"),
    (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not an image"),
    (b"8BPS" + b"\x00" * 60, "not an image"),  # a Photoshop file: Pillow reads it, this app does not
])
def test_unusable_files(tmp_path, data, match):
    path = tmp_path / "upload"
    path.write_bytes(data)
    with pytest.raises(UserError, match=match):
        images.read_image(path)


def test_corrupt_image_message_has_no_server_path(tmp_path):
    path = tmp_path / "truncated.jpg"
    path.write_bytes(PHOTO.read_bytes()[:3000])
    with pytest.raises(UserError, match="corrupt or truncated") as info:
        images.read_image(path)
    assert str(tmp_path) not in str(info.value)


def test_exif_rotation_from_the_header(tmp_path):
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 6
    Image.new("RGB", (80, 40)).save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert images.image_header(tmp_path / "r.jpg") == images.ImageHeader("JPEG", 40, 80)
    rgb, info = images.read_image(tmp_path / "r.jpg")
    assert rgb.shape[:2] == (80, 40) and info["original_size"] == [80, 40] and not info["downscaled"]


def test_png_exif_after_the_pixels_is_not_read_from_the_header_but_reported_right(tmp_path):
    """PNG's own getexif would decode the image to find an eXIf chunk after the pixel data; the header
    check does not, and read_image reports the size as load_image shows it (rotated)."""
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 6
    buf = io.BytesIO()
    Image.new("RGB", (80, 40), (200, 0, 0)).save(buf, "PNG")
    data = buf.getvalue()
    end = data.index(b"IEND") - 4  # the eXIf chunk goes after IDAT, before IEND
    path = tmp_path / "late_exif.png"
    path.write_bytes(data[:end] + _chunk(b"eXIf", exif.tobytes()[6:]) + data[end:])
    assert images.image_header(path) == images.ImageHeader("PNG", 80, 40)
    rgb, info = images.read_image(path)
    assert rgb.shape[:2] == (80, 40) and info["original_size"] == [80, 40]


def test_inline_base64_images(tmp_path):
    import base64

    good = "data:image/jpeg;base64," + base64.b64encode(PHOTO.read_bytes()).decode()
    assert images.save_data_url(good, tmp_path).read_bytes() == PHOTO.read_bytes()
    for bad, match in (("data:image/png,rawbytes", "not a base64 data URL"),
                       ("notdata:;base64,AAAA", "not a base64"),
                       ("data:image/png;base64,A", "not valid base64")):
        with pytest.raises(UserError, match=match):
            images.save_data_url(bad, tmp_path)
    assert images.describe_upload(good) == ""  # API images: checked when the request runs


def test_describe_upload(tmp_path):
    Image.new("RGB", (3000, 2000)).save(tmp_path / "big.jpg")
    assert images.describe_upload(tmp_path / "big.jpg") == "3000×2000 JPEG: segmented at about 1024×683."
    assert images.describe_upload(PHOTO) == "600×400 JPEG."
    assert images.describe_upload(None) == ""
    (tmp_path / "notes.png").write_bytes(b"notes")
    with pytest.raises(UserError, match="not an image"):
        images.describe_upload(tmp_path / "notes.png")


# -------------------------------------------------------------------------------------- class names
def test_separators_cleaning_and_merging():
    assert classes.parse_class_names("a, b\nc;d\te,,;\n") == (("a", "b", "c", "d", "e"), [])
    assert classes.parse_class_names(" sky \x07, ro\x00ad ") == (("sky", "road"), [])
    assert classes.parse_class_names("", allow_empty=True) == ((), [])
    names, notes = classes.parse_class_names("Sky; sky, tree\nSKY,  tree , cafe\u0301, café")
    assert names == ("Sky", "tree", "café")
    assert [n.text for n in notes] == ["Merged 4 repeated class name(s): 'sky', 'tree', 'café'."]
    assert not notes[0].loud  # a quiet note in the status, not a toast
    assert classes.parse_class_names("/etc/passwd")[0] == ("/etc/passwd",)  # never read as a file
    assert classes.parse_class_names("ade20k")[0] == ("ade20k",)  # nor as a dataset key


@pytest.mark.parametrize("text,match", [
    ("", "at least one class name"), (" , ;\n,", "at least one class name"), ("\x00\x07", "at least one"),
    ("a" * (classes.MAX_TEXT_CHARS + 1), "the limit is 40,000"),
    ("sky, " + "x" * (classes.MAX_NAME_CHARS + 1), "Class name 2 is 201 characters long"),
    (", ".join(f"c{i}" for i in range(classes.MAX_CLASSES + 1)), "513 class names given; the limit is 512"),
    (["a", "b"], "must be text"),
])
def test_class_name_limits(text, match):
    with pytest.raises(UserError, match=match):
        classes.parse_class_names(text)


def test_class_name_limits_are_inclusive():
    assert len(classes.parse_class_names(", ".join(f"c{i}" for i in range(512)))[0]) == 512
    assert classes.parse_class_names("x" * 200)[0] == ("x" * 200,)
    assert classes.parse_class_names(", ".join(["dup"] * 600))[0] == ("dup",)  # 1 after merging


def test_presets_are_words_clip_reads():
    voc = classes.PRESETS["Pascal VOC (21)"]
    assert {"dining table", "potted plant", "tv monitor"} <= set(voc)
    assert not {"diningtable", "pottedplant", "tvmonitor"} & set(voc)
    stuff = classes.PRESETS["COCO-Stuff (171)"]
    assert {"wall", "brick wall", "wooden floor", "sky", "building", "desk"} <= set(stuff)
    assert len(stuff) == 171 and not [n for n in stuff if n.endswith(("-other", "-stuff"))]
    assert len(classes.PRESETS["ADE20K (150)"]) == 150
    for names in classes.PRESETS.values():  # each survives the box unchanged
        assert classes.parse_class_names(classes.preset_text(names))[0] == names


def test_match_classes_accepts_words_for_benchmark_spellings():
    model = ["sky", "Tree  top", "diningtable", "wall-other", "car", "sky"]
    assert classes.match_classes(model, ["car", "tree top", "dining table", "Wall", "boat", "sky"]) == \
        ([4, 1, 2, 3, 0], ["boat"])
