"""The training-free methods against their papers' released code, re-derived here on tiny random models:
NACLIP (Gaussian bias, reduced block, strategies), SCLIP, CLIP Surgery (dual path, feature surgery),
ProxyCLIP (proxy attention on a tiny random timm ViT, weights path, offline error), the peers' positional
embedding resize, PAMR on hand-made inputs, and the peers' synonym / probability / area rules."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_clip
from timm.models.vision_transformer import VisionTransformer

from denseclip.clip import WEIGHTS_DIR_ENV
from denseclip.config import CLIP_MEAN, CLIP_STD, TINY_VIT_ARCH
from denseclip.encoders.base import resize_pos_embed
from denseclip.hub import WeightsUnavailableError
from denseclip.zeroshot import (
    BACKGROUND,
    METHODS,
    LabelRule,
    ZeroShotSegmenter,
    build_queries,
    create_proxy,
    describe_methods,
    feature_surgery,
    labels_from_maps,
    neighbourhood_bias,
    pamr,
    training_free_block,
)

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(3)
    return make_clip(TINY_VIT_ARCH)


def _zs(clip, **kw):
    kw.setdefault("templates", "single")
    kw.setdefault("size", 64)
    return ZeroShotSegmenter(clip, "tiny", **kw)


def _heads(t, n):  # (B, N, C) -> (B, n, N, C/n)
    return t.reshape(t.shape[0], t.shape[1], n, -1).transpose(1, 2)


def _merge(t):  # (B, n, N, d) -> (B, N, n*d)
    return t.transpose(1, 2).flatten(2)


def _qkv(blk, x):
    y = F.layer_norm(x, (x.shape[-1],), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
    return (y @ w.T + b for w, b in zip(blk.attn.in_proj_weight.chunk(3), blk.attn.in_proj_bias.chunk(3)))


def _dino_pos(pos, n0, dst):
    """DINO's interpolate_pos_encoding, as SCLIP / NACLIP / ClearCLIP / ProxyCLIP write it."""
    if dst == (n0, n0):
        return pos
    grid = pos[1:].reshape(1, n0, n0, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((dst[0] + 0.1) / n0, (dst[1] + 0.1) / n0), mode="bicubic")
    assert grid.shape[2:] == dst
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(-1, pos.shape[-1])])


def _tokens(clip, x):
    """conv1, class token, the peers' positional embedding, ln_pre: (B, 1 + h*w, C) and (h, w)."""
    v = clip.visual
    t = v.conv1(x)
    grid = tuple(t.shape[2:])
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([v.class_embedding.expand(t.shape[0], 1, -1), t], dim=1)
    return v.ln_pre(t + _dino_pos(v.positional_embedding, 4, grid)), grid


def _before_last(clip, x, n=1):
    """_tokens, then CLIP's blocks but the last `n`: (B, 1 + h*w, C) and (h, w)."""
    t, grid = _tokens(clip, x)
    for blk in clip.visual.transformer.resblocks[:-n]:
        t = blk(t)
    return t, grid


def _project(clip, t, grid):
    return (clip.visual.ln_post(t) @ clip.visual.proj).transpose(1, 2).reshape(t.shape[0], -1, *grid)


# ---------------------------------------------------------------------------------------- registry
def test_every_method_is_listed_with_its_paper_and_runs(clip):
    text = describe_methods()
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    for name, m in METHODS.items():
        assert name in text and m.summary and m.paper and m.towers
        if "vit" in m.towers and name != "proxyclip":  # proxyclip: see its own tests
            r = _zs(clip, method=name).predict(img, ["sky", "tree"])
            assert r.scores.shape == (2, 40, 56) and torch.isfinite(r.scores).all()
            assert r.info["method"] == name
    with pytest.raises(ValueError, match="not available for a ViT"):
        _zs(clip, method="attention_pool")


# ------------------------------------------------------------------------------ positional embedding
def test_bicubic_dino_pos_embed_is_the_peers_resize_and_samples_at_n_plus_0_1():
    pos = torch.randn(1 + 14 * 14, 8)
    got = resize_pos_embed(pos, (14, 14), (21, 9), "bicubic_dino")
    torch.testing.assert_close(got, _dino_pos(pos, 14, (21, 9)), atol=0, rtol=0)
    assert (got - resize_pos_embed(pos, (14, 14), (21, 9), "bicubic")).abs().max() > 1e-3  # not timm's
    # by hand: output row i samples source row (i + 0.5) * 14 / 21.1 - 0.5, torch's cubic kernel (A = -0.75)
    values = torch.randn(14)
    col = torch.cat([torch.zeros(1, 1), values[:, None].expand(14, 14).reshape(-1, 1)])
    out = resize_pos_embed(col, (14, 14), (21, 21), "bicubic_dino")[1:, 0].reshape(21, 21)[:, 7]

    def cubic(t, a=-0.75):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a

    for i in range(21):
        src = (i + 0.5) * 14 / 21.1 - 0.5
        x0 = int(np.floor(src))
        expect = sum(cubic(src - j) * values[min(max(j, 0), 13)] for j in range(x0 - 1, x0 + 3))
        assert out[i].item() == pytest.approx(float(expect), abs=1e-5)


# ------------------------------------------------------------------------------------------ NACLIP
def _window_bias(h, w, std):
    """NACLIP's construction: each position's one-hot image convolved ('same') with a (2h-1, 2w-1) Gaussian
    window; the class token's row and column 0."""
    ys = torch.arange(2 * h - 1.0) - (h - 1)
    xs = torch.arange(2 * w - 1.0) - (w - 1)
    window = torch.exp(-(ys[:, None] ** 2 + xs[None] ** 2) / (2 * std ** 2))
    onehots = torch.eye(h * w).reshape(h * w, 1, h, w)
    rows = F.conv2d(onehots, window[None, None], padding="same").reshape(h * w, h * w)
    return F.pad(rows, (1, 0, 1, 0))


@pytest.mark.parametrize("h, w, std", [(3, 4, 5.0), (5, 2, 1.5), (1, 1, 5.0)])
def test_neighbourhood_bias_is_nacplips_gaussian(h, w, std):
    got = neighbourhood_bias(h, w, std)
    assert got.shape == (1 + h * w, 1 + h * w)
    torch.testing.assert_close(got, _window_bias(h, w, std), atol=1e-6, rtol=0)
    assert (got[0] == 0).all() and (got[:, 0] == 0).all() and torch.equal(got, got.T)
    if w > 1:  # by hand: a patch and its right neighbour, 1 patch apart
        assert got[1, 2].item() == pytest.approx(np.exp(-1 / (2 * std ** 2)), abs=1e-7)
    assert torch.diagonal(got)[1:].eq(1).all()


@pytest.mark.parametrize("kind", ["naclip", "nonly"])
def test_naclip_strategies_equal_its_released_code(clip, kind):
    """NACLIP's custom_attn, one image at a time as its segmentor runs: "naclip" adds the Gaussian window to
    k k^T * scale; "nonly" replaces the logits by the window times scale * mean(|q_i| |k_j|), the mean over
    the image's heads and token pairs (one number per image)."""
    blk = clip.visual.transformer.resblocks[-1]
    x, n = torch.randn(2, 1 + 12, 32), blk.attn.num_heads
    bias = neighbourhood_bias(3, 4, 5.0)
    with torch.no_grad():
        got = training_free_block(blk, x, kind, bias=bias)
        for i in range(2):
            q, k, v = (_heads(t, n)[0] for t in _qkv(blk, x[i:i + 1]))  # (heads, N, d)
            scale = (32 // n) ** -0.5
            if kind == "naclip":
                logits = k @ k.transpose(-1, -2) * scale + bias
            else:
                pairs = torch.einsum("hop,hPO->hpP", q.norm(dim=2)[:, None], k.norm(dim=2)[:, :, None])
                logits = torch.zeros(n, 13, 13) + bias * (scale * pairs.mean().item())
            out = (logits.softmax(-1) @ v).transpose(0, 1).reshape(1, 13, 32)
            ref = out @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
            torch.testing.assert_close(got[i:i + 1], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="attention must be one of"):
        _zs(clip, attention="gav")  # NACLIP's first release; its current code has no "gav"


def test_naclip_dense_equals_its_released_forward(clip):
    """Peers' embed (bicubic, +0.1), CLIP's blocks, the reduced last block (k-k + Gaussian, no residual,
    no FFN), ln_post and proj on every patch: on a non-square input (grid 4 x 6)."""
    zs = _zs(clip, method="naclip")
    x = torch.randn(1, 3, 64, 96)
    blocks = clip.visual.transformer.resblocks
    with torch.no_grad():
        t, grid = _before_last(clip, x)
        q, k, v = (_heads(a, blocks[-1].attn.num_heads) for a in _qkv(blocks[-1], t))
        a = (k @ k.transpose(-1, -2) * (v.shape[-1] ** -0.5) + _window_bias(*grid, 5.0)).softmax(-1)
        out = blocks[-1].attn.out_proj(_merge(a @ v))
        ref = _project(clip, out[:, 1:], grid)
        torch.testing.assert_close(zs.dense_embeddings(x), ref, atol=1e-5, rtol=1e-5)


def test_sclip_dense_keeps_residual_and_ffn(clip):
    zs = _zs(clip, method="sclip")
    x = torch.randn(1, 3, 80, 64)
    blocks = clip.visual.transformer.resblocks
    with torch.no_grad():
        t, grid = _before_last(clip, x)
        blk = blocks[-1]
        q, k, v = (_heads(a, blk.attn.num_heads) for a in _qkv(blk, t))
        s = v.shape[-1] ** -0.5
        attn = (q @ q.transpose(-1, -2) * s).softmax(-1) + (k @ k.transpose(-1, -2) * s).softmax(-1)
        t = t + blk.attn.out_proj(_merge(attn @ v))
        t = t + blk.mlp(blk.ln_2(t))
        ref = _project(clip, t[:, 1:], grid)
        torch.testing.assert_close(zs.dense_embeddings(x), ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ CLIP Surgery
def _authors_feature_surgery(image_features, text, redundant=None):
    """CLIP Surgery's clip_feature_surgery: image_features (B, 1 + N, C) normalised, the class token first;
    the class weights come from the class token's similarities, once per image."""
    if redundant is not None:
        return image_features @ (text - redundant).T
    prob = (image_features[:, :1] @ text.T * 2).softmax(-1)
    w = prob / prob.mean(-1, keepdim=True)
    feats = image_features[:, :, None] * text[None, None] * w.reshape(image_features.shape[0], 1, -1, 1)
    return (feats - feats.mean(2, keepdim=True)).sum(-1)  # (B, 1 + N, K)


def test_clip_surgery_dual_path_and_feature_surgery_equal_the_authors(clip):
    zs = _zs(clip, method="clip_surgery", surgery_blocks=2)
    x = torch.randn(2, 3, 64, 64)
    text = F.normalize(torch.randn(5, 32), dim=-1)
    blocks = clip.visual.transformer.resblocks
    with torch.no_grad():
        t, grid = _before_last(clip, x, 2)
        new, ori = t, t
        for blk in blocks[-2:]:  # the authors: v-v of the original path's tokens; no FFN on the new path
            q, k, v = (_heads(a, blk.attn.num_heads) for a in _qkv(blk, ori))
            vv = blk.attn.out_proj(_merge((v @ v.transpose(-1, -2) * v.shape[-1] ** -0.5).softmax(-1) @ v))
            new, ori = new + vv, blk(ori)
        new = torch.cat([ori[:, :1], new[:, 1:]], dim=1)  # the authors' x[0] = x_ori[0]
        feats = F.normalize(clip.visual.ln_post(new) @ clip.visual.proj, dim=-1)
        ref = _authors_feature_surgery(feats, text)[:, 1:]  # (B, N, K)
        got, _ = zs._score_maps(x, text, zs.options())
        torch.testing.assert_close(got.flatten(2).transpose(1, 2), ref, atol=1e-6, rtol=1e-4)
        per_pixel = feats[:, 1:] @ text.T  # what the per-pixel weighting computed: not the authors'
        w = 5 * (2 * per_pixel).softmax(-1)
        assert ((w * per_pixel - (w * per_pixel).mean(-1, keepdim=True)) - ref).abs().max() > 1e-3
        empty = F.normalize(torch.randn(1, 32), dim=-1)  # one class: the empty prompt's similarity removed
        got1, _ = zs._score_maps(x, text[:1], zs.options(), redundant=empty)
        ref1 = _authors_feature_surgery(feats, text[:1], empty)[:, 1:]
        torch.testing.assert_close(got1.flatten(2).transpose(1, 2), ref1, atol=1e-6, rtol=1e-4)
        _, g = zs.dense_embeddings(x, return_global=True)
        torch.testing.assert_close(g, clip.encode_image(x), atol=1e-5, rtol=1e-5)  # the original path is CLIP


def test_feature_surgery_by_hand():
    s = torch.tensor([0.2, 0.5, 0.1]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    cls = torch.tensor([[0.4, 0.0, 0.1]])
    w = 3 * torch.softmax(2 * cls, dim=1).view(1, 3, 1, 1)
    torch.testing.assert_close(feature_surgery(s, cls), w * s - (w * s).mean(1, keepdim=True))
    one = torch.full((1, 1, 2, 2), 0.3)
    got = feature_surgery(one, redundant=torch.full((1, 1, 2, 2), 0.1))
    torch.testing.assert_close(got, torch.full((1, 1, 2, 2), 0.2))


# ---------------------------------------------------------------------------------------- ProxyCLIP
def _proxy(patch=8):
    torch.manual_seed(5)
    return VisionTransformer(img_size=64, patch_size=patch, embed_dim=24, depth=2, num_heads=2, num_classes=0,
                             dynamic_img_size=True).eval()


@pytest.mark.parametrize("patch", [8, 16])
def test_proxyclip_dense_equals_its_released_forward(clip, patch):
    proxy = _proxy(patch)
    zs = _zs(clip, method="proxyclip", proxy=proxy)
    x = torch.randn(1, 3, 64, 64)
    blk = clip.visual.transformer.resblocks[-1]
    with torch.no_grad():
        t, grid = _before_last(clip, x)
        mean, std, m2, s2 = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN,
                                                                        IMAGENET_STD))
        xp = (x * std + mean - m2) / s2  # CLIP's normalisation undone, the proxy's (DINO: ImageNet's) applied
        f = proxy.forward_features(xp)[:, 1:]
        hp = 64 // patch
        qk = F.normalize(f.transpose(1, 2), dim=1)
        sim = torch.einsum("bcm,bcn->bmn", qk, qk)
        sim = (sim - sim.mean(dim=(1, 2), keepdim=True) * 1.2) * 3.0
        sim[sim < 0] = float("-inf")
        a = sim.softmax(-1)
        n = blk.attn.num_heads
        v = _heads(list(_qkv(blk, t))[2], n)[:, :, 1:]  # (1, n, 16, d): per head, as the authors
        v = v.reshape(n, *grid, -1).permute(0, 3, 1, 2)
        v = F.interpolate(v, size=(hp, hp), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        out = blk.attn.out_proj((a @ v).transpose(0, 1).reshape(1, hp * hp, -1))
        ref = _project(clip, out, (hp, hp))
        torch.testing.assert_close(zs.dense_embeddings(x), ref, atol=1e-5, rtol=1e-5)
    assert zs._grid(zs.options()) == (patch, 16)  # maps at the proxy grid, input padded to both patches
    r = zs.predict(np.zeros((30, 50, 3), np.uint8), ["sky", "tree"])  # a flat image: every similarity equal
    assert torch.isfinite(r.scores).all() and r.labels.shape == (30, 50)  # no empty (all -inf) attention row


def test_proxy_weights_fail_fast_offline_and_load_from_the_weights_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=WEIGHTS_DIR_ENV):
        create_proxy("vit_base_patch8_224.dino")
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ValueError, match="unknown timm model"):
        create_proxy("not_a_model")
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("test_vit.r160_in1k", pretrained=False)  # the released layout, with a classifier
    save_file(ref.state_dict(), str(tmp_path / "test_vit.r160_in1k.safetensors"))
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    got = create_proxy("test_vit.r160_in1k").state_dict()
    for k, v in got.items():
        torch.testing.assert_close(v, ref.state_dict()[k])
    assert not any(k.startswith("head") for k in got)


# --------------------------------------------------------------------------------------------- PAMR
def _pamr_by_kernels(img, mask, steps, dilations):
    """PAMR as 3x3 kernels (the original formulation): 8 difference / copy kernels, 9 window kernels."""
    def kernels(centre, neighbour, with_centre=False):
        ks = []
        for i in range(9):
            if i == 4 and not with_centre:
                continue
            k = torch.zeros(3, 3)
            k.view(-1)[i] += neighbour
            k[1, 1] += centre
            ks.append(k)
        return torch.stack(ks)[:, None]

    def apply(x, ks):  # (B, C, H, W) -> (B, C, P, H, W)
        b, c = x.shape[:2]
        out = [F.conv2d(F.pad(x.reshape(b * c, 1, *x.shape[2:]), [d] * 4, mode="replicate"), ks, dilation=d)
               for d in dilations]
        return torch.cat(out, 1).reshape(b, c, -1, *x.shape[2:])

    sigma = apply(img, kernels(0, 1, True)).std(2, keepdim=True)
    aff = (-apply(img, kernels(1, -1)).abs() / (1e-8 + 0.1 * sigma)).mean(1, keepdim=True).softmax(2)
    for _ in range(steps):
        mask = (apply(mask, kernels(0, 1)) * aff).sum(2)
    return mask


def test_pamr_equals_the_kernel_formulation():
    g = torch.Generator().manual_seed(0)
    img, mask = torch.rand(1, 3, 37, 41, generator=g), torch.rand(1, 5, 37, 41, generator=g)
    torch.testing.assert_close(pamr(img, mask, 3, (1, 2)), _pamr_by_kernels(img, mask, 3, (1, 2)),
                               atol=1e-5, rtol=1e-5)


def test_pamr_by_hand_flat_image_averages_the_16_neighbours_and_edges_stop_it():
    mask = torch.zeros(1, 1, 41, 41)
    mask[0, 0, 20, 20] = 1.0
    out = pamr(torch.zeros(1, 3, 41, 41), mask, steps=1, dilations=(8, 16))  # flat: every affinity 1/16
    expect = torch.zeros(41, 41)
    for d in (8, 16):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    expect[20 - dy * d, 20 - dx * d] += 1 / 16
    torch.testing.assert_close(out[0, 0], expect)
    # two flat halves: the maps follow the image edge and do not leak across it
    img = torch.zeros(1, 3, 40, 40)
    img[..., 20:] = 1.0
    maps = torch.stack([1 - img[0, 0], img[0, 0]])[None]
    torch.testing.assert_close(pamr(img, maps, 10), maps, atol=1e-6, rtol=0)
    assert (pamr(torch.zeros_like(img), maps, 10) - maps).abs().max() > 0.1  # without the edge it leaks
    with pytest.raises(ValueError, match="one size"):
        pamr(img, maps[..., :30], 1)


def test_pamr_in_predict_runs_at_the_image_size_as_naclip(clip):
    """NACLIP's predict: the windows' maps at the working size, upsampled (bilinear) to the image's size, then
    PAMR there on the working image upsampled the same way (the kernel formulation above as reference)."""
    img = np.random.default_rng(1).integers(0, 256, (45, 67, 3), dtype=np.uint8)
    names = ["sky", "tree", "road"]
    zs = _zs(clip, method="naclip")
    r = zs.predict(img, names, pamr_steps=10, slide=(32, 16))
    opts = zs.options(slide=(32, 16))
    with torch.no_grad():
        x = zs.working_image(img, 64)
        maps, _ = zs.image_maps(x, zs.encode_text(names), opts)
        assert maps.shape[1:] == x.shape[2:] == (64, 95)
        full = F.interpolate(maps[None], size=(45, 67), mode="bilinear", align_corners=False)
        image = F.interpolate(x, size=(45, 67), mode="bilinear", align_corners=False)
        ref = _pamr_by_kernels(image, full, 10, (8, 16))[0]
        at_working = F.interpolate(_pamr_by_kernels(x, maps[None], 10, (8, 16)), size=(45, 67),
                                   mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(r.scores, ref, atol=1e-6, rtol=1e-4)
    assert (at_working - ref).abs().max() > 1e-3 * ref.abs().max()  # the order matters
    assert r.info["pamr_steps"] == 10 and torch.equal(r.labels, r.scores.argmax(0))


def test_maskclip_vit_resizes_the_positional_embedding_bicubically_as_maskclip(clip):
    """MaskCLIP's ViT (mmseg's resize_pos_embed, interpolate_mode='bicubic'): the grid resized by size,
    bicubic, no antialias; then the value path with the residual and FFN kept."""
    zs = _zs(clip, method="maskclip")
    x = torch.randn(1, 3, 64, 96)
    v = clip.visual
    with torch.no_grad():
        grid = v.positional_embedding[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(4, 6), mode="bicubic", align_corners=False)
        pos = torch.cat([v.positional_embedding[:1], grid[0].flatten(1).T])
        t = v.conv1(x).flatten(2).transpose(1, 2)
        t = v.ln_pre(torch.cat([v.class_embedding.expand(1, 1, -1), t], dim=1) + pos)
        for blk in v.transformer.resblocks[:-1]:
            t = blk(t)
        blk = v.transformer.resblocks[-1]
        t = t + blk.attn.out_proj(list(_qkv(blk, t))[2])
        t = t + blk.mlp(blk.ln_2(t))
        torch.testing.assert_close(zs.dense_embeddings(x), _project(clip, t[:, 1:], (4, 6)), atol=1e-5,
                                   rtol=1e-5)


# ----------------------------------------------------------------------- synonyms and the peers' rules
def _sclip_postprocess(logits, query_idx, scale, prob_thd, area_thd):
    """SCLIP's postprocess_result: softmax over queries, max over a class's queries, area and prob rules."""
    p = (logits * scale).softmax(0)
    num_cls = int(max(query_idx)) + 1
    if num_cls != len(query_idx):
        cls_index = F.one_hot(torch.tensor(query_idx)).T.view(num_cls, len(query_idx), 1, 1)
        p = (p[None] * cls_index).max(1)[0]
    if area_thd is not None:
        pred = F.one_hot(p.argmax(0), num_cls).to(p.dtype)
        area = pred[:, :, 1:].sum((0, 1), keepdim=True)
        p[1:] *= (area > area_thd * area.sum()).to(p.dtype).transpose(0, -1)
    seg = p.argmax(0)
    seg[p.max(0)[0] < prob_thd] = 0
    return seg


@pytest.mark.parametrize("area", [None, 0.1, 0.3])
def test_synonyms_probability_and_area_rules_equal_sclips_postprocess(area):
    g = torch.Generator().manual_seed(7)
    classes = {"background": ["sky", "wall", "tree"], "cat": "cat", "person": ["person", "man"], "car": "car"}
    cq = build_queries(classes)
    assert cq.query_class == (0, 0, 0, 1, 2, 2, 3) and cq.names == tuple(classes)
    logits = torch.rand(7, 30, 40, generator=g) * 0.3
    rule = LabelRule(4, cq.class_tensor(), 0.4, "prob", 65.0, area, background_class=0)
    got = labels_from_maps(logits, (30, 40), (30, 40), rule)
    got[got == BACKGROUND] = 0  # the dataset's background class
    assert torch.equal(got, _sclip_postprocess(logits, cq.query_class, 65.0, 0.4, area))


def test_predict_with_synonyms_is_the_max_over_them(clip):
    zs = _zs(clip, method="naclip")
    img = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    flat = zs.predict(img, ["sky", "cloud", "tree"])
    grouped = zs.predict(img, [("sky", "cloud"), "tree"])
    assert grouped.class_names == ("sky", "tree")
    torch.testing.assert_close(grouped.scores[0], flat.scores[:2].amax(0))
    torch.testing.assert_close(grouped.probs[0], flat.probs[:2].amax(0))
    assert torch.equal(grouped.labels, torch.tensor([0, 0, 1])[flat.labels])
    mapping = zs.predict(img, {"heaven": ["sky", "cloud"], "tree": "tree"})
    torch.testing.assert_close(mapping.scores, grouped.scores)
    with pytest.raises(ValueError, match="also class names"):
        zs.predict(img, [("sky", "cloud"), "tree"], background="cloud")
    with pytest.raises(TypeError, match="synonyms"):
        zs.predict(img, ["sky", 3])
    thr = zs.predict(img, ["sky", "tree"], background=["wall"], threshold=0.6, background_on="prob")
    best = zs.predict(img, ["sky", "tree", "wall"])
    bg = (best.labels == 2) | (best.probs.amax(0) < 0.6)
    assert torch.equal(thr.labels == BACKGROUND, bg)
    with pytest.raises(ValueError, match="threshold once"):
        zs.predict(img, ["sky"], background=0.2, threshold=0.3)
