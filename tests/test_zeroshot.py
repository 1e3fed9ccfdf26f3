"""Zero-shot segmentation: shapes, class-name handling, odd and huge images, text cache, background,
and exactness of the training-free dense paths (tiny random open_clip models, offline)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_clip, randomize_bn
from PIL import Image

import denseclip.zeroshot.labels as labels_module
from denseclip.clip import WEIGHTS_DIR_ENV
from denseclip.config import TINY_RN_ARCH, TINY_VIT_ARCH
from denseclip.hub import WeightsUnavailableError
from denseclip.inference import slide_windows
from denseclip.zeroshot import (
    BACKGROUND,
    LabelRule,
    ZeroShotResult,
    ZeroShotSegmenter,
    labels_from_maps,
    training_free_block,
    upsample,
)

NAMES = ["sky", "tree", "road", "person"]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: much faster on a busy shared CPU


def _zs(kind: str = "rn", **kw) -> ZeroShotSegmenter:
    clip = make_clip(TINY_RN_ARCH if kind == "rn" else TINY_VIT_ARCH)
    if kind == "rn":
        randomize_bn(clip.visual)
    kw.setdefault("size", 96)
    kw.setdefault("templates", "single")
    return ZeroShotSegmenter(clip, "tiny", pretrained=None, **kw)


def _image(h: int = 70, w: int = 100, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def rn():
    torch.manual_seed(0)
    return _zs("rn")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return _zs("vit")


# ------------------------------------------------------------------------------------- basic contract
@pytest.mark.parametrize("kind", ["rn", "vit"])
def test_shapes_dtypes_and_probabilities(kind, rn, vit):
    zs = rn if kind == "rn" else vit
    r = zs.predict(_image(), NAMES)
    assert isinstance(r, ZeroShotResult)
    assert r.scores.shape == r.probs.shape == (4, 70, 100)
    assert r.scores.dtype == r.probs.dtype == torch.float32
    assert r.labels.shape == (70, 100) and r.labels.dtype == torch.long
    assert r.class_names == tuple(NAMES) and r.image_size == (70, 100) and r.full_resolution
    assert r.scores.abs().max() <= 1 + 1e-5  # cosine similarities
    torch.testing.assert_close(r.probs.sum(0), torch.ones(70, 100))
    assert torch.equal(r.labels, r.scores.argmax(0))
    assert set(r.timing) >= {"load", "text", "image", "render", "total"} and r.seconds > 0
    assert r.info["working_size"] == (96, 137) and r.info["pretrained"] is None
    assert r.info["dtype"] == "float32" and r.info["method"] == zs.method
    cov = r.coverage()
    assert cov.shape == (4,) and abs(cov.sum() - 1) < 1e-6
    top = r.top_classes(2)
    assert len(top) == 2 and top[0][1] >= top[1][1] and top[0][0] in NAMES
    assert r.top_classes(1, by="score")[0][1] == pytest.approx(float(r.scores.max()))
    assert torch.equal(r.score_map("tree"), r.scores[1])


def test_one_class_and_several_hundred_classes(vit):
    one = vit.predict(_image(), ["sky"])
    assert one.scores.shape == (1, 70, 100) and (one.labels == 0).all()
    assert torch.allclose(one.probs, torch.ones(1))
    many = [f"object number {i}" for i in range(300)]
    r = vit.predict(_image(), many)
    assert r.scores.shape == (300, 70, 100) and len(r.class_names) == 300
    assert torch.equal(r.labels, r.scores.argmax(0))


def test_probs_use_clip_logit_scale(rn):
    r = rn.predict(_image(), NAMES)
    torch.testing.assert_close(r.probs, (r.scores * rn.clip.logit_scale.exp()).softmax(0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["rn", "vit"])
def test_permuting_class_names_permutes_score_maps(kind, rn, vit):
    zs = rn if kind == "rn" else vit
    img = _image(seed=1)
    a = zs.predict(img, NAMES)
    perm = [2, 0, 3, 1]
    b = zs.predict(img, [NAMES[i] for i in perm])
    torch.testing.assert_close(b.scores, a.scores[perm], atol=1e-6, rtol=0)
    torch.testing.assert_close(b.probs, a.probs[perm], atol=1e-6, rtol=0)
    assert torch.equal(torch.tensor(perm)[b.labels], a.labels)


def test_dense_embeddings_shape_and_method_errors(rn, vit):
    x = torch.randn(2, 3, 64, 96)
    assert rn.dense_embeddings(x).shape == (2, 32, 2, 3)
    d, g = vit.dense_embeddings(x, return_global=True)
    assert d.shape == (2, 32, 4, 6) and g.shape == (2, 32)
    with pytest.raises(ValueError, match="not available for a ResNet"):
        _zs("rn", method="vv")
    with pytest.raises(ValueError, match="not available for a ViT"):
        vit.predict(_image(), NAMES, method="attention_pool")  # per call too, before any work
    with pytest.raises(ValueError, match="ViTs only"):
        _zs("rn", residual=False)
    with pytest.raises(ValueError, match="unknown zero-shot method"):
        _zs("vit", method="segment-anything")
    for old in ("dense_mode", "clearclip", "is_random", "autocast_dtype"):  # the old names are gone
        with pytest.raises((KeyError, TypeError)):
            _zs("vit", **{old: "qq"})
    assert _zs("vit").method == "naclip" and "method=naclip" in _zs("vit").describe()
    assert _zs("rn").method == "maskclip" and vit.options(method="sclip").residual
    assert not vit.options(method="clearclip").residual and vit.options(method="clearclip").attention == "qq"
    assert vit.options(method="sclip", residual=False).residual is False


@pytest.mark.parametrize("kind, stride", [("rn", 32), ("vit", 16)])
def test_image_embeddings_are_the_cells_covering_the_working_image(kind, stride, rn, vit):
    zs = rn if kind == "rn" else vit
    x = zs.working_image(_image(70, 100), 96)
    assert x.shape[2:] == (96, 137)
    emb = zs.image_embeddings(x)
    assert emb.shape == (32, -(-96 // stride), -(-137 // stride))  # the last column is partly padding
    padded = F.pad(x, (0, -137 % stride, 0, -96 % stride))
    torch.testing.assert_close(emb, zs.dense_embeddings(padded)[0][:, :emb.shape[1], :emb.shape[2]])


def test_method_and_pamr_per_call_on_one_tower(vit):
    """One segmenter, every ViT method per call: each equals a segmenter built with that method."""
    img = _image(seed=6)
    for method in ("naclip", "clearclip", "sclip", "maskclip"):
        own = ZeroShotSegmenter(vit.clip, "tiny", pretrained=None, method=method, size=96, templates="single")
        a, b = vit.predict(img, NAMES, method=method), own.predict(img, NAMES)
        assert a.info["method"] == b.info["method"] == method
        torch.testing.assert_close(a.scores, b.scores, atol=0, rtol=0)
    plain, refined = vit.predict(img, NAMES), vit.predict(img, NAMES, pamr_steps=3)
    assert refined.info["pamr_steps"] == 3 and (plain.scores - refined.scores).abs().max() > 1e-4
    assert vit.defaults.pamr_steps == 0  # a call changes nothing for the next one


def test_fp16_on_cpu_is_refused():
    zs = _zs("rn").to(torch.float16)
    with pytest.raises(ValueError, match="bfloat16"):
        zs.predict(_image(), NAMES)


@pytest.mark.parametrize("kind", ["rn", "vit"])
def test_bf16_weights_close_to_fp32_with_fp32_outputs(kind, rn, vit):
    fp32 = rn if kind == "rn" else vit
    zs = _zs(kind)
    zs.load_state_dict(fp32.state_dict())
    zs.to(torch.bfloat16)
    assert zs.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in zs.parameters())
    a, b = fp32.predict(_image(), NAMES), zs.predict(_image(), NAMES)
    assert b.scores.dtype == b.probs.dtype == torch.float32 and b.info["dtype"] == "bfloat16"
    assert (a.scores - b.scores).abs().max() < 0.05
    assert zs.encode_text(NAMES).dtype == torch.float32


# --------------------------------------------------------------------------------------- class names
def test_duplicates_rejected_or_merged(rn):
    with pytest.raises(ValueError, match="duplicate class name"):
        rn.predict(_image(), ["sky", "tree", "Sky"])
    r = rn.predict(_image(), ["sky", "tree", " Sky "], dedupe=True)
    assert r.class_names == ("sky", "tree") and r.scores.shape[0] == 2


def test_empty_blank_and_unicode_names(rn):
    with pytest.raises(ValueError, match="no class names"):
        rn.predict(_image(), [])
    with pytest.raises(ValueError, match="empty or blank"):
        rn.predict(_image(), ["sky", "  "])
    with pytest.raises(TypeError, match="not one string"):
        rn.predict(_image(), "sky")
    names = ["cafe\u0301", "日本の寺", "🐱 cat", "Straße"]
    r = rn.predict(_image(), names)
    assert r.class_names[0] == "café" and r.scores.shape[0] == 4  # NFC-normalised
    assert torch.isfinite(r.scores).all()


def test_long_names_warn_about_truncation(rn):
    long = " ".join(["very"] * 90) + " long thing"
    with pytest.warns(UserWarning, match="truncated"):
        r = rn.predict(_image(), ["sky", long])
    assert r.scores.shape[0] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rn.predict(_image(), ["sky", "a rather long but fine name"])


def test_background_pseudo_class_clash(rn):
    with pytest.raises(ValueError, match="also class names"):
        rn.predict(_image(), ["sky", "background"], background="Background")


# -------------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("make", [
    lambda: np.random.default_rng(0).integers(0, 256, (50, 80), dtype=np.uint8),           # grayscale
    lambda: np.random.default_rng(0).integers(0, 256, (50, 80, 4), dtype=np.uint8),        # RGBA
    lambda: np.random.default_rng(0).integers(0, 65536, (50, 80, 3), dtype=np.uint16),     # 16-bit
    lambda: Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 80), dtype=np.uint8)),
    lambda: Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 80, 4), dtype=np.uint8), "RGBA"),
    lambda: Image.fromarray(np.random.default_rng(0).integers(0, 65536, (50, 80), dtype=np.uint16)),  # I;16
], ids=["gray-np", "rgba-np", "u16-np", "gray-pil", "rgba-pil", "u16-pil"])
def test_odd_image_modes_accepted(rn, make):
    r = rn.predict(make(), NAMES)
    assert r.labels.shape == (50, 80) and r.scores.shape == (4, 50, 80)


def test_bad_images_give_clear_errors(rn, tmp_path):
    with pytest.raises(FileNotFoundError):
        rn.predict(tmp_path / "missing.png", NAMES)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not an image"):
        rn.predict(tmp_path / "junk.png", NAMES)
    with pytest.raises(ValueError, match="shape"):
        rn.predict(np.zeros((5, 6, 2), np.uint8), NAMES)


def _peak_rss_mib(reset: bool = False) -> float | None:
    """Linux peak resident memory (VmHWM) of this process; reset=True restarts the peak."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return None


@pytest.mark.parametrize("kind", ["rn", "vit"])
def test_huge_image_bounded_working_size_and_output(kind):
    zs = _zs(kind, size=224)
    seen = []
    hook = zs.clip.visual.conv1.register_forward_pre_hook(lambda m, inp: seen.append(tuple(inp[0].shape[2:])))
    img = np.zeros((4000, 6000, 3), np.uint8)
    img[:2000] = 200
    base = _peak_rss_mib(reset=True)
    r = zs.predict(img, NAMES, max_output_elements=1 << 22)
    peak = _peak_rss_mib()
    hook.remove()
    assert r.labels.shape == (4000, 6000) and r.image_size == (4000, 6000)
    assert len(seen) == 1 and min(seen[0]) <= 224 + 32 and max(seen[0]) <= 4 * 224
    assert r.info["working_size"] == (224, 336)
    assert r.scores.numel() <= 1 << 22 and not r.full_resolution  # stored smaller, same aspect ratio
    assert abs(r.scores.shape[2] / r.scores.shape[1] - 1.5) < 0.01
    assert r.score_map(0).shape == (4000, 6000)
    # Expected: labels (int64, 183 MiB) + small tiles. Unbounded code would hold the K=4 full-size maps
    # (366 MiB each for scores and probs) or a float32 copy of the image (275 MiB): measured ~940 MiB.
    if base is not None:
        assert peak - base < 450, f"predict on 24 MP used {peak - base:.0f} MiB"


def test_slide_windows_cover_image_and_match_whole_with_one_window(rn):
    img = _image(96, 96, seed=3)
    whole = rn.predict(img, NAMES)
    one = rn.predict(img, NAMES, slide=(96, 64))  # one window = the whole working image (96 x 96)
    torch.testing.assert_close(one.scores, whole.scores, atol=1e-5, rtol=0)
    seen = []
    hook = rn.clip.visual.conv1.register_forward_pre_hook(lambda m, inp: seen.append(tuple(inp[0].shape)))
    r = rn.predict(_image(300, 500), NAMES, size=192, slide=(128, 96), window_batch=2)
    hook.remove()
    assert r.scores.shape == (4, 300, 500) and r.info["working_size"] == (192, 320)
    assert all(s[0] <= 2 and s[2:] == (128, 128) for s in seen)
    assert sum(s[0] for s in seen) == len(slide_windows(192, 320, 128, 96)) == 6


# ---------------------------------------------------------------------------------------- text cache
def test_text_cache_skips_text_encoder(monkeypatch):
    zs = _zs("rn", templates="simple")
    calls = []
    orig = zs.clip.encode_text
    monkeypatch.setattr(zs.clip, "encode_text",
                        lambda tokens, **kw: calls.append(len(tokens)) or orig(tokens, **kw))
    zs.predict(_image(), NAMES)
    assert sum(calls) == 4 * 7
    calls.clear()
    zs.predict(_image(seed=5), list(reversed(NAMES)))
    assert calls == []  # same names: no text encoder at all
    zs.predict(_image(), NAMES + ["car"])
    assert sum(calls) == 7  # only the new name
    calls.clear()
    zs.predict(_image(), NAMES, templates="single")
    assert sum(calls) == 4  # other templates: another cache entry


def test_prompt_ensemble_is_mean_of_normalised_template_embeddings(rn):
    templates = ["a photo of a {}.", "a photo of the large {}.", "a sketch of {}"]
    got = rn.encode_text(["sky", "tree"], templates)
    for i, name in enumerate(["sky", "tree"]):
        with torch.no_grad():
            e = F.normalize(rn.clip.encode_text(rn.tokenizer([t.format(name) for t in templates])), dim=-1)
        torch.testing.assert_close(got[i], F.normalize(e.mean(0), dim=0), atol=1e-6, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2))


# ---------------------------------------------------------------------------------------- background
def test_background_threshold_on_score_and_prob(rn):
    img = _image(seed=2)
    base = rn.predict(img, NAMES)
    thr = float(base.scores.amax(0).median())
    r = rn.predict(img, NAMES, background=thr)
    best = base.scores.amax(0)
    assert torch.equal(r.labels == BACKGROUND, best < thr)
    assert torch.equal(r.labels[best >= thr], base.labels[best >= thr])
    background = float((r.labels == BACKGROUND).float().mean())
    assert 0 < background < 1 and r.coverage().sum() == pytest.approx(1 - background)
    assert (rn.predict(img, NAMES, background=1.01).labels == BACKGROUND).all()
    pthr = float(base.probs.amax(0).median())
    rp = rn.predict(img, NAMES, background=pthr, background_on="prob")
    clear = (base.probs.amax(0) - pthr).abs() > 1e-6  # pixels at the threshold itself may round either way
    assert torch.equal((rp.labels == BACKGROUND)[clear], (base.probs.amax(0) < pthr)[clear])
    with pytest.raises(ValueError, match="background_on"):
        rn.predict(img, NAMES, background=0.1, background_on="logit")
    with pytest.raises(KeyError, match="valid fields"):
        rn.predict(img, NAMES, backgroud=0.1)  # a typo is named, with the valid options


def _text_from_image_cells(monkeypatch, zs, img, names):
    """Make each name's "text" embedding the dense embedding of one image cell, so that every class wins
    somewhere (random tiny text towers make one class win everywhere)."""
    x = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(96, 137), mode="bilinear")
    x = F.pad((x - 127.5) / 64, (0, 23))
    cells = F.normalize(zs.dense_embeddings(x)[0].flatten(1).T, dim=-1)  # (15, D)
    table = {n: cells[(7 * i) % len(cells)] for i, n in enumerate(names)}
    monkeypatch.setattr(zs, "_text", lambda ns, templates=None: torch.stack([table[n] for n in ns]))


def test_background_pseudo_class(monkeypatch):
    zs, img = _zs("rn"), _image(seed=4)
    names = ["sky", "tree", "road", "person", "car"]
    _text_from_image_cells(monkeypatch, zs, img, names)
    real, bg_names = ["sky", "road", "car"], ["tree", "person"]
    plain = zs.predict(img, real + bg_names)
    r = zs.predict(img, real, background=bg_names)
    bg = plain.labels >= len(real)
    assert bg.any() and (~bg).any() and len(plain.labels[~bg].unique()) > 1  # the test can see a difference
    assert torch.equal(r.labels == BACKGROUND, bg)
    assert torch.equal(r.labels[~bg], plain.labels[~bg])
    torch.testing.assert_close(r.scores, plain.scores[:3])
    torch.testing.assert_close(r.probs, plain.probs[:3])  # the softmax includes the pseudo-classes
    assert r.class_names == tuple(real) and r.info["background_names"] == tuple(bg_names)


# ------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("pos", [False, True])
def test_resnet_value_path_by_hand(pos):
    zs = _zs("rn", value_pos_embed=pos)
    pool = zs.clip.visual.attnpool
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        got = zs.dense_embeddings(x)
        c5 = zs.encoder.forward_features(x)[-1]
        b, c, h, w = c5.shape
        tokens = c5.flatten(2).transpose(1, 2)
        if pos:  # positional embedding of the spatial positions, resized 2x2 -> 3x5
            grid = pool.positional_embedding[1:].reshape(1, 2, 2, c).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
            tokens = tokens + grid.flatten(2).transpose(1, 2)
        ref = (tokens @ pool.v_proj.weight.T + pool.v_proj.bias) @ pool.c_proj.weight.T + pool.c_proj.bias
    assert got.shape == (2, 32, 3, 5)
    torch.testing.assert_close(got, ref.transpose(1, 2).reshape(b, -1, h, w), atol=1e-5, rtol=1e-5)
    other = _zs("rn", value_pos_embed=not pos)
    other.load_state_dict(zs.state_dict())
    assert (other.dense_embeddings(x) - got).abs().max() > 1e-3  # the flag matters


@pytest.mark.parametrize("kind", ["rn", "vit"])
def test_global_embedding_equals_open_clip_encode_image(kind):
    modes = ["attention_pool", "maskclip"] if kind == "rn" else ["naclip", "clip_surgery", "vanilla"]
    for mode in modes:
        zs = _zs(kind, method=mode)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            _, g = zs.dense_embeddings(x, return_global=True)
            ref = zs.clip.encode_image(x)
        torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-5)


def test_attention_pool_mode_dense_is_every_token_a_query():
    zs = _zs("rn", method="attention_pool")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        got = zs.dense_embeddings(x)
        ref = zs.encoder(x).dense
    torch.testing.assert_close(got, ref)
    value = _zs("rn")
    value.load_state_dict(zs.state_dict())
    assert (value.dense_embeddings(x) - got).abs().max() > 1e-3


def _heads(t, n):  # (B, N, C) -> (B, n, N, C/n)
    return t.reshape(t.shape[0], t.shape[1], n, -1).transpose(1, 2)


@pytest.mark.parametrize("mode", ["vv", "qq", "kk", "csa", "value", "qk"])
@pytest.mark.parametrize("residual", [False, True])
def test_vit_training_free_block_by_definition(mode, residual):
    torch.manual_seed(1)
    clip = make_clip(TINY_VIT_ARCH)
    blk = clip.visual.transformer.resblocks[-1]
    x = torch.randn(2, 7, 32)
    n = blk.attn.num_heads
    with torch.no_grad():
        y = F.layer_norm(x, (32,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
        wq, wk, wv = blk.attn.in_proj_weight.chunk(3)
        bq, bk, bv = blk.attn.in_proj_bias.chunk(3)
        q, k, v = (_heads(y @ w.T + b, n) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
        scale = (32 // n) ** -0.5

        def sm(a, b):
            return torch.softmax(a @ b.transpose(-1, -2) * scale, dim=-1)

        o = {"vv": lambda: sm(v, v) @ v, "qq": lambda: sm(q, q) @ v, "kk": lambda: sm(k, k) @ v,
             "csa": lambda: (sm(q, q) + sm(k, k)) @ v, "value": lambda: v, "qk": lambda: sm(q, k) @ v}[mode]()
        o = o.transpose(1, 2).reshape(2, 7, 32) @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
        if residual:
            o = x + o
            o = o + blk.mlp(F.layer_norm(o, (32,), blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps))
        got = training_free_block(blk, x, mode, residual=residual)
    torch.testing.assert_close(got, o, atol=1e-5, rtol=1e-5)
    if mode == "qk" and residual:
        torch.testing.assert_close(got, blk(x), atol=1e-5, rtol=1e-5)  # open_clip's own block


def test_vit_dense_is_projected_replaced_last_block():
    zs = _zs("vit", method="sclip")
    enc = zs.encoder
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        t, (h, w) = enc.embed(x, "bicubic_dino")
        visual = zs.clip.visual
        for blk in visual.transformer.resblocks[:-1]:
            t = blk(t)
        t = training_free_block(visual.transformer.resblocks[-1], t, "csa", residual=True)
        ref = (visual.ln_post(t[:, 1:]) @ visual.proj).transpose(1, 2).reshape(1, -1, h, w)
        torch.testing.assert_close(zs.dense_embeddings(x), ref, atol=1e-5, rtol=1e-5)


def test_upsample_is_interpolate_over_the_covered_extent():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 7)
    ref = F.interpolate(x[None], size=(37, 53), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(upsample(x, (37, 53), (5, 7)), ref)
    small = F.interpolate(x[None], size=(3, 4), mode="bilinear", align_corners=False)[0]  # downsampling too
    torch.testing.assert_close(upsample(x, (3, 4), (5, 7)), small)
    # padded input: 4.5 x 6.25 of the 5 x 7 cells cover the output (an 8x upsampling of the padded grid)
    pad = F.interpolate(x[None], size=(40, 56), mode="bilinear", align_corners=False)[0][:, :36, :50]
    torch.testing.assert_close(upsample(x, (36, 50), (4.5, 6.25)), pad, atol=1e-5, rtol=0)
    assert upsample(x[None].expand(2, -1, -1, -1), (36, 50), (4.5, 6.25)).shape == (2, 6, 36, 50)


@pytest.mark.parametrize("k, hw", [(6, (5, 7)), (40, (9, 11)), (3, (1, 1))])
def test_labels_are_the_argmax_of_the_full_size_maps_in_bounded_chunks(monkeypatch, k, hw):
    monkeypatch.setattr(labels_module, "_CHUNK", 3 * 70 * 110)  # three classes at a time
    maps = torch.randn(k, *hw, generator=torch.Generator().manual_seed(k))
    full = F.interpolate(maps[None], size=(70, 110), mode="bilinear", align_corners=False)[0]
    assert torch.equal(labels_from_maps(maps, hw, (70, 110), LabelRule(k)), full.argmax(0))
    # the last map as a background pseudo-class, and thresholds on the best score / probability
    labels = labels_from_maps(maps, hw, (70, 110), LabelRule(k - 1))
    assert torch.equal(labels == BACKGROUND, full.argmax(0) == k - 1)
    thr = float(full.amax(0).median())
    assert torch.equal(labels_from_maps(maps, hw, (70, 110), LabelRule(k, threshold=thr)) == BACKGROUND,
                       full.amax(0) < thr)
    prob = (30 * full).softmax(0).amax(0)
    rule = LabelRule(k, threshold=float(prob.median()), on="prob", logit_scale=30.0)
    got = labels_from_maps(maps, hw, (70, 110), rule) == BACKGROUND
    clear = (prob - prob.median()).abs() > 1e-6
    assert torch.equal(got[clear], (prob < prob.median())[clear])


@pytest.mark.parametrize("kind", ["rn", "vit"])
def test_the_image_tower_is_registered_once(kind):
    zs = _zs(kind)
    assert set(zs.state_dict()) == {f"clip.{k}" for k in zs.clip.state_dict()}  # no "encoder." duplicates
    assert len(zs.state_dict()) == len(zs.clip.state_dict()) and zs.encoder.visual is zs.clip.visual


def test_from_pretrained_offline_fails_fast_naming_env_var(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=WEIGHTS_DIR_ENV):
        ZeroShotSegmenter.from_pretrained("RN50", pretrained="openai")
    assert time.perf_counter() - t0 < 15


def test_from_pretrained_random_rn50_is_flagged():
    with pytest.warns(UserWarning, match="random weights"):
        zs = ZeroShotSegmenter.from_pretrained("RN50", pretrained=None, device="cpu", dtype=None, size=64)
    assert zs.pretrained is None and "RANDOM" in zs.describe() and not zs.is_vit and zs.method == "maskclip"
    assert zs.dtype == torch.float32
    r = zs.predict(_image(64, 64), ["cat", "dog"], templates="single")
    assert r.scores.shape == (2, 64, 64) and r.info["pretrained"] is None


def test_from_pretrained_dtype_auto_is_the_fast_dtype(monkeypatch):
    from denseclip.clip import fast_dtype

    monkeypatch.setattr("denseclip.clip.create_clip", lambda *a, **k: make_clip(TINY_RN_ARCH))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zs = ZeroShotSegmenter.from_pretrained("RN50", None, device="cpu")
        assert zs.dtype == fast_dtype("cpu")
        monkeypatch.setattr("denseclip.clip.fast_dtype", lambda device: torch.float32)  # a CPU without bf16
        assert ZeroShotSegmenter.from_pretrained("RN50", None, device="cpu").dtype == torch.float32
        with pytest.raises(ValueError, match="bfloat16"):
            ZeroShotSegmenter.from_pretrained("RN50", None, device="cpu", dtype="float16")


@pytest.mark.parametrize("name, tag, expected", [
    ("RN50", "openai", True), ("ViT-B-16", "openai", True), ("ViT-B-16", "laion2b_s34b_b88k", False),
    ("ViT-B-16-quickgelu", "metaclip_fullcc", True), ("RN50", None, True)])
def test_create_clip_decides_quick_gelu_as_open_clip_does(monkeypatch, tmp_path, name, tag, expected):
    """One place decides the activation, from open_clip's model and tag configs (LAION's ViT-B-16 weights
    were trained with GELU); every builder (from_pretrained, eval_zeroshot, the toy) goes through it."""
    import open_clip
    from open_clip.transformer import QuickGELU
    from safetensors.torch import save_file

    from denseclip.clip import create_clip, quick_gelu_for

    assert quick_gelu_for(name, open_clip.get_model_config(name), tag) is expected
    path = tmp_path / "tiny.safetensors"  # a tiny model's weights stand in for the tag's file
    save_file(make_clip(TINY_VIT_ARCH).state_dict(), str(path))
    monkeypatch.setattr("denseclip.clip.clip_weights_file", lambda model, t: path)
    arch = {**TINY_VIT_ARCH, **({"quick_gelu": True} if "quickgelu" in name else {})}
    clip = create_clip(name, tag, arch=arch)
    assert isinstance(clip.visual.transformer.resblocks[0].mlp.gelu, QuickGELU) is expected
    assert isinstance(create_clip(name, tag, arch=arch, quick_gelu=not expected)
                      .visual.transformer.resblocks[0].mlp.gelu, QuickGELU) is not expected  # explicit wins


def test_cli_takes_the_zero_shot_method_and_pamr(tmp_path, capsys):
    from denseclip.cli import main

    path = tmp_path / "img.png"
    Image.fromarray(_image(40, 60)).save(path)
    assert main([str(path), "--classes", "sky, tree", "--tiny", "--pamr", "--templates", "single"]) == 0
    assert "pamr_steps=10" in capsys.readouterr().err
    assert main([str(path), "--classes", "sky, tree", "--tiny", "--method", "naclip"]) == 2
    assert "not available for a ResNet" in capsys.readouterr().err
