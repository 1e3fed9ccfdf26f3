"""predict(): the authors' test-pipeline arithmetic, slide windows, augmentations, any image input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import denseclip
from denseclip import TestConfig
from denseclip.data.transforms import keep_ratio_size, normalize_image
from denseclip.inference import _logits, slide, slide_windows

WHOLE = TestConfig(mode="whole", short_side=64, max_long_side=256)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return denseclip.build_model("denseclip-tiny-rn", pretrained=False).eval()


def test_slide_windows_match_mmseg_arithmetic():
    # ADE20K-like 512 x 683 with crop 512 / stride 341: one row, two columns, the last flush right
    assert slide_windows(512, 683, 512, 341) == [(0, 512, 0, 512), (0, 512, 171, 683)]
    # 700 x 1200: h_grids = (700-512+340)//341+1 = 2, w_grids = (1200-512+340)//341+1 = 4
    boxes = slide_windows(700, 1200, 512, 341)
    assert len(boxes) == 8
    assert boxes[:4] == [(0, 512, 0, 512), (0, 512, 341, 853), (0, 512, 682, 1194), (0, 512, 688, 1200)]
    assert boxes[4] == (188, 700, 0, 512)
    # smaller than the crop: one window = the whole image
    assert slide_windows(300, 400, 512, 341) == [(0, 300, 0, 400)]
    with pytest.raises(ValueError):
        slide_windows(10, 10, 5, 0)


def test_keep_ratio_size_is_mmcv_rescale():
    assert keep_ratio_size(480, 640, 512, 2048) == (512, 683)  # 640*512/480 = 682.67 -> 683
    assert keep_ratio_size(100, 1000, 512, 2048) == (205, 2048)  # long side caps the scale
    assert keep_ratio_size(512, 512, 512, 2048) == (512, 512)


def test_slide_logits_average_overlaps(model):
    x = normalize_image(torch.rand(1, 3, 64, 112) * 255)
    with torch.no_grad():
        out = slide(lambda crops: _logits(model, crops), x, crop=64, stride=48)
        # by hand: windows at x=0 and x=48; overlap 48..64 averaged
        a = F.interpolate(model(x[..., 0:64]), size=(64, 64), mode="bilinear", align_corners=False)
        b = F.interpolate(model(x[..., 48:112]), size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[..., :48], a[..., :48], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[..., 64:], b[..., 16:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[..., 48:64], (a[..., 48:] + b[..., :16]) / 2, atol=1e-5, rtol=1e-5)


def test_slide_batching_does_not_change_results(model):
    x = normalize_image(torch.rand(1, 3, 100, 150) * 255)
    with torch.no_grad():
        one = slide(lambda crops: _logits(model, crops), x, 64, 40, batch=1)
        many = slide(lambda crops: _logits(model, crops), x, 64, 40, batch=5)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)


def test_predict_whole_equals_manual_pipeline(model):
    rgb = (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)
    r = denseclip.predict(model, rgb, WHOLE)
    # by hand: resize short side to 64 (64 x 107), normalise, logits, resize to 64x107, to 48x80, softmax
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(64, 107), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = model(normalize_image(x))
    logits = F.interpolate(logits, size=(64, 107), mode="bilinear", align_corners=False)
    probs = F.interpolate(logits, size=(48, 80), mode="bilinear", align_corners=False).softmax(1)[0]
    torch.testing.assert_close(r.probs, probs, atol=1e-5, rtol=1e-5)
    assert torch.equal(r.labels, probs.argmax(0))
    assert r.labels.shape == (48, 80) and r.class_names == model.class_names
    assert r.seconds > 0 and r.info["input_size"] == (48, 80) and r.info["test"]["mode"] == "whole"


def test_predict_slide_with_one_window_equals_whole(model):
    rgb = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    a = denseclip.predict(model, rgb, WHOLE)
    b = denseclip.predict(model, rgb, TestConfig(mode="slide", crop=64, stride=48, short_side=64))
    torch.testing.assert_close(a.probs, b.probs, atol=1e-5, rtol=1e-5)


def test_predict_flip_and_scales_average(model):
    rgb = (np.random.default_rng(2).random((64, 96, 3)) * 255).astype(np.uint8)
    plain = denseclip.predict(model, rgb, WHOLE)
    flipped = denseclip.predict(model, rgb[:, ::-1].copy(), WHOLE)
    both = denseclip.predict(model, rgb, WHOLE.replace(flip=True))
    torch.testing.assert_close(both.probs, (plain.probs + flipped.probs.flip(-1)) / 2, atol=1e-5, rtol=1e-5)
    ms = denseclip.predict(model, rgb, WHOLE.replace(scales=(0.75, 1.0, 1.5)))
    torch.testing.assert_close(ms.probs.sum(0), torch.ones(64, 96), atol=1e-4, rtol=0)
    assert ms.info["test"]["scales"] == [0.75, 1.0, 1.5]
    parts = [denseclip.predict(model, rgb, WHOLE.replace(scales=(s,))).probs for s in (0.75, 1.0, 1.5)]
    torch.testing.assert_close(ms.probs, sum(parts) / 3, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [
    lambda rgb: Image.fromarray(rgb),
    lambda rgb: Image.fromarray(rgb).convert("L"),
    lambda rgb: Image.fromarray(rgb).convert("RGBA"),
    lambda rgb: Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),  # 16-bit grayscale
    lambda rgb: rgb[..., 0],
    lambda rgb: torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
])
def test_predict_accepts_any_image_kind(model, make):
    rgb = (np.random.default_rng(3).random((40, 56, 3)) * 255).astype(np.uint8)
    r = denseclip.predict(model, make(rgb), WHOLE)
    assert r.labels.shape == (40, 56) and r.probs.shape == (5, 40, 56)
    assert r.coverage().sum() == pytest.approx(1.0)


def test_predict_restores_training_mode_and_validates_mode(model):
    model.train()
    denseclip.predict(model, np.zeros((40, 40, 3), np.uint8), WHOLE)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="whole"):
        denseclip.predict(model, np.zeros((40, 40, 3), np.uint8), WHOLE.replace(mode="sliding"))


def test_predict_follows_the_models_test_pipeline_by_default(model):
    rgb = (np.random.default_rng(5).random((48, 80, 3)) * 255).astype(np.uint8)
    assert model.cfg.test.mode == "whole" and model.cfg.test.short_side == 64
    default, whole = denseclip.predict(model, rgb), denseclip.predict(model, rgb, WHOLE)
    torch.testing.assert_close(default.probs, whole.probs)


def test_predict_bf16_autocast_close(model):
    rgb = (np.random.default_rng(4).random((64, 64, 3)) * 255).astype(np.uint8)
    a = denseclip.predict(model, rgb, WHOLE)
    b = denseclip.predict(model, rgb, WHOLE, amp_dtype=torch.bfloat16)
    assert (a.probs - b.probs).abs().max() < 0.1


def test_bfloat16_weights_agree_with_float32_on_a_trained_model(one_thread):
    """The fast path: `model.to(torch.bfloat16)`, then predict as usual (input cast at the edge, logits,
    probabilities and labels in float32). On a tiny model trained 30 steps on the synthetic task (measured:
    labels 99.8-99.9% the same, per-pixel cosine of the score maps >= 0.9993) the two agree."""
    from denseclip.data import SyntheticSegDataset, to_image_tensor

    torch.manual_seed(0)
    model = denseclip.build_model("denseclip-tiny-rn", pretrained=False)
    train = SyntheticSegDataset(64, seed=0, size=(64, 64))
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    for step in range(30):
        batch = [train[(8 * step + j) % 64] for j in range(8)]
        x = torch.cat([normalize_image(to_image_tensor(s["image"])) for s in batch])
        loss = model(x, torch.stack([torch.from_numpy(s["label"]) for s in batch]))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    fast = copy.deepcopy(model).to(torch.bfloat16)
    for sample in SyntheticSegDataset(6, seed=1, size=(64, 96), offset=10**6):
        a, b = denseclip.predict(model, sample["image"]), denseclip.predict(fast, sample["image"])
        assert b.probs.dtype == torch.float32 and (a.labels == sample["label"]).float().mean() > 0.6
        assert (a.labels == b.labels).float().mean() > 0.98
        x = normalize_image(to_image_tensor(sample["image"]))
        with torch.no_grad():
            s32, s16 = model.forward_dense(x)["score_map"], fast.forward_dense(x)["score_map"].float()
        assert F.cosine_similarity(s32, s16, dim=1).min() > 0.995
