"""load_image: every kind of input a person has, and clear errors for bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from denseclip.data.images import load_image
from denseclip.data.transforms import normalize_image, resize_keep_ratio, to_image_tensor


def _rgb(h=20, w=30, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_rgb_path_round_trip(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and np.array_equal(out, rgb)
    assert np.array_equal(load_image(str(tmp_path / "a.png")), rgb)


def test_grayscale_and_16bit():
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = load_image(Image.fromarray(g))
    assert out.shape == (16, 16, 3) and np.array_equal(out[..., 0], g) and np.array_equal(out[..., 2], g)
    g16 = (g.astype(np.uint16) * 257)
    assert np.array_equal(load_image(Image.fromarray(g16))[..., 1], g)
    assert np.array_equal(load_image(g16)[..., 1], g)  # numpy uint16 too


def test_rgba_composited_over_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top opaque red-ish, bottom transparent
    for src in (rgba, Image.fromarray(rgba, "RGBA")):
        out = load_image(src)
        assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[3, 3]) == (255, 255, 255)


def test_float_bool_chw_tensor_inputs():
    rgb = _rgb()
    f = rgb.astype(np.float32) / 255
    assert np.abs(load_image(f).astype(int) - rgb).max() <= 1
    t = torch.from_numpy(f).permute(2, 0, 1)
    assert np.abs(load_image(t).astype(int) - rgb).max() <= 1
    assert load_image(np.ones((5, 6), bool)).max() == 255


def test_cmyk_and_palette_and_exif(tmp_path):
    rgb = _rgb()
    assert load_image(Image.fromarray(rgb).convert("CMYK")).shape == (20, 30, 3)
    assert load_image(Image.fromarray(rgb).convert("P")).shape == (20, 30, 3)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (30, 20, 3)


@pytest.mark.parametrize("bad, err, match", [
    (np.zeros((4, 4, 2), np.uint8), ValueError, "shape"),
    (np.zeros((0, 4, 3), np.uint8), ValueError, "empty"),
    (np.full((4, 4, 3), np.nan, np.float32), ValueError, "NaN"),
    (np.full((4, 4), 1000, np.int32), ValueError, "0..255"),
    ([1, 2, 3], TypeError, "unsupported"),
])
def test_bad_arrays(bad, err, match):
    with pytest.raises(err, match=match):
        load_image(bad)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ValueError, match="0 bytes"):
        load_image(tmp_path / "zero.png")
    (tmp_path / "text.png").write_text("hello, not an image")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "text.png")
    buf = io.BytesIO()
    Image.fromarray(_rgb(200, 200)).save(buf, "PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_image(tmp_path / "trunc.png")


def test_huge_jpeg_is_reduced_while_decoding(tmp_path):
    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(tmp_path / "big.jpg", quality=70)
    out = load_image(tmp_path / "big.jpg", max_side=1000)
    assert max(out.shape[:2]) <= 1000 and out.shape[1] > out.shape[0]
    assert abs(int(out[100, 100, 1]) - 200) < 8


def test_max_side_for_arrays_keeps_aspect():
    out = load_image(np.zeros((300, 1200, 3), np.uint8), max_side=600)
    assert out.shape == (150, 600, 3)


def test_tensor_helpers():
    x = to_image_tensor(np.full((4, 6, 3), 255, np.uint8))
    assert x.shape == (1, 3, 4, 6) and x.max() == 255
    n = normalize_image(x)
    assert n.shape == x.shape and n[0, 0, 0, 0] == pytest.approx((1 - 0.48145466) / 0.26862954, rel=1e-5)
    assert resize_keep_ratio(torch.zeros(1, 3, 100, 200), 50, 1000).shape == (1, 3, 50, 100)


def test_files_above_the_limits_are_refused_from_their_header(tmp_path, monkeypatch):
    from denseclip.data import images

    Image.fromarray(_rgb(20, 30)).save(tmp_path / "a.png")
    Image.fromarray(_rgb(20, 30)).save(tmp_path / "a.jpg")
    tight = images.ImageLimits(max_pixels=500, max_jpeg_pixels=1000)
    assert images.read_header(tmp_path / "a.png") == images.ImageHeader("PNG", 30, 20)
    monkeypatch.setattr(images, "_pil_array", lambda *a, **k: pytest.fail("decoded"))
    for path in (tmp_path / "a.png", tmp_path / "a.jpg"):  # 600 pixels at full size: refused
        with pytest.raises(images.ImageFileError, match=r"30x20 pixels.*ImageLimits\.max_pixels") as err:
            images.load_image(path, limits=tight)
        assert err.value.reason == "pixels"
    monkeypatch.undo()
    assert images.load_image(tmp_path / "a.jpg", max_side=16, limits=tight).shape == (11, 16, 3)  # reduced
    with pytest.raises(images.ImageFileError, match="max_pixels"):  # a PNG is decoded at full size anyway
        images.load_image(tmp_path / "a.png", max_side=16, limits=tight)
