"""The authors' training pipeline: resize arithmetic, cat_max_ratio crops, flips, photometric, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from denseclip.data.seg_transforms import (
    TrainTransform,
    _crop_box,
    hsv_to_rgb,
    photometric_distortion,
    random_crop,
    random_resize,
    resize,
    rgb_to_hsv,
)
from denseclip.data.transforms import keep_ratio_size, normalize_image

PALETTE = np.array([(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)], np.uint8)


def _denorm(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) CLIP-normalised -> (H, W, 3) float 0..255."""
    zero = normalize_image(torch.zeros(1, 3, 1, 1))[0]
    one = normalize_image(torch.ones(1, 3, 1, 1))[0]
    return ((x - zero) / (one - zero)).permute(1, 2, 0).numpy()


def test_random_resize_is_mmseg_arithmetic():
    img, lab = np.zeros((300, 400, 3), np.uint8), np.zeros((300, 400), np.int64)
    for seed in range(5):
        ratio = np.random.default_rng(seed).random() * 1.5 + 0.5
        out, out_lab = random_resize(img, lab, np.random.default_rng(seed), (2048, 512), (0.5, 2.0))
        expect = keep_ratio_size(300, 400, int(512 * ratio), int(2048 * ratio))
        assert out.shape[:2] == expect == out_lab.shape
    # a very wide image is limited by the long side
    wide = np.zeros((100, 2000, 3), np.uint8)
    out, _ = resize(wide, None, keep_ratio_size(100, 2000, 512, 2048))
    assert out.shape[:2] == (102, 2048)


def test_resize_label_nearest_keeps_values():
    lab = np.random.default_rng(0).choice([0, 3, 255], size=(20, 30))
    _, out = resize(np.zeros((20, 30, 3), np.uint8), lab, (47, 71))
    assert set(np.unique(out)) <= {0, 3, 255} and out.dtype == np.int64


def test_cat_max_ratio_rejects_single_class_crops():
    lab = np.zeros((100, 100), np.int64)
    lab[:, 50:] = 1  # two halves: a crop of 50 is one class > 75% for most offsets

    def frac(lbl):
        counts = np.bincount(lbl[lbl != 255].ravel(), minlength=2)
        return counts.max() / counts.sum()

    img = np.zeros((100, 100, 3), np.uint8)
    with_ratio = [frac(random_crop(img, lab, 50, np.random.default_rng(s), 0.75)[1]) for s in range(40)]
    without = [frac(random_crop(img, lab, 50, np.random.default_rng(s), 1.0)[1]) for s in range(40)]
    assert all(f < 0.75 for f in with_ratio)
    assert sum(f >= 0.75 for f in without) > 10  # the constraint is what makes the difference


def test_cat_max_ratio_ignores_ignore_pixels():
    lab = np.full((60, 60), 255, np.int64)
    lab[::8] = np.arange(60) % 2  # ignore covers 7/8 of every crop; classes 0 and 1 are 50/50 in any crop
    img = np.zeros((60, 60, 3), np.uint8)
    for seed in range(5):
        y1, y2, x1, x2 = _crop_box(60, 60, (30, 30), np.random.default_rng(seed))
        _, out = random_crop(img, lab, 30, np.random.default_rng(seed), 0.75)
        assert np.array_equal(out, lab[y1:y2, x1:x2])  # the first box is accepted: ignore does not count


def test_crop_smaller_image_and_padding():
    t = TrainTransform(crop_size=64, scale=(96, 24), ratio_range=None, photometric=False, flip_prob=0.0)
    img = np.full((30, 40, 3), 128, np.uint8)
    lab = np.ones((30, 40), np.int64)
    x, y = t(img, lab, np.random.default_rng(0))  # resized to 24 x 32, then padded to 64 x 64
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert (y[:24, :32] == 1).all() and (y[24:] == 255).all() and (y[:, 32:] == 255).all()
    assert (x[:, 24:] == 0).all() and (x[:, :, 32:] == 0).all()  # 0 after normalisation (mmseg Pad order)
    assert torch.allclose(torch.from_numpy(_denorm(x)[:24, :32]), torch.tensor(128.0), atol=1e-3)


def test_flip_moves_image_and_label_together():
    lab = np.zeros((32, 48), np.int64)
    lab[:, :10], lab[5:20, 30:40] = 2, 3
    img = PALETTE[lab]
    t = TrainTransform(crop_size=32, scale=(48, 32), ratio_range=None, cat_max_ratio=1.0, photometric=False)
    flips = 0
    for seed in range(12):
        x, y = t(img, lab, np.random.default_rng(seed))
        pix = np.round(_denorm(x)).astype(int)
        assert np.array_equal(pix, PALETTE[y.numpy()].astype(int))  # every pixel still has its label's colour
        flips += int((y[:, -1] == 2).any())  # class 2 sits at the left edge unless flipped
    assert 0 < flips < 12


def test_photometric_keeps_labels_and_changes_pixels():
    rng = np.random.default_rng(0)
    img = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    lab = rng.integers(0, 4, (40, 50))
    on = TrainTransform(crop_size=32, scale=(200, 40), photometric=True)
    off = TrainTransform(crop_size=32, scale=(200, 40), photometric=False)
    changed = 0
    for seed in range(6):
        x1, y1 = on(img, lab, np.random.default_rng(seed))
        x0, y0 = off(img, lab, np.random.default_rng(seed))
        assert torch.equal(y1, y0)  # photometric draws come after all geometric ones
        changed += int(not torch.allclose(x1, x0))
    assert changed >= 4
    out = photometric_distortion(img, np.random.default_rng(1))
    assert out.dtype == np.uint8 and out.shape == img.shape


def test_hsv_round_trip_close_to_identity():
    rgb = (np.random.default_rng(0).random((30, 30, 3)) * 255).astype(np.uint8)
    back = hsv_to_rgb(rgb_to_hsv(rgb)).astype(int)
    assert np.abs(back - rgb).max() <= 4  # hue is quantised to 2 degrees (OpenCV's uint8 HSV)
    hsv = rgb_to_hsv(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 10, 10]]], np.uint8))
    assert hsv[0, :, 0].tolist() == [0, 60, 120, 0] and hsv[0, 3, 1] == 0  # OpenCV hue units, grey: S = 0


def test_same_rng_same_sample():
    rng = np.random.default_rng(3)
    img, lab = (rng.random((70, 90, 3)) * 255).astype(np.uint8), rng.integers(0, 5, (70, 90))
    t = TrainTransform(crop_size=48, scale=(256, 64))
    a, b = t(img, lab, np.random.default_rng(11)), t(img, lab, np.random.default_rng(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="differ in size"):
        t(img, lab[:-1], np.random.default_rng(0))
