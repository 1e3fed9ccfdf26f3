"""Dense encoders: parity with open_clip and with the attention-pool / ViT formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_clip, randomize_bn

from denseclip.config import TINY_RN_ARCH, TINY_VIT_ARCH
from denseclip.encoders import CLIPResNetEncoder, CLIPViTEncoder, TimmEncoder, resize_pos_embed
from denseclip.encoders.base import grid_of


def test_resize_pos_embed_identity_and_formula():
    pos = torch.randn(1 + 16, 8)
    assert resize_pos_embed(pos, (4, 4), (4, 4)) is pos
    out = resize_pos_embed(pos, (4, 4), (6, 3))
    assert out.shape == (1 + 18, 8)
    assert torch.equal(out[0], pos[0])
    grid = pos[1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(6, 3), mode="bilinear", align_corners=False)[0].reshape(8, 18).T
    torch.testing.assert_close(out[1:], ref)
    with pytest.raises(ValueError, match="square"):
        grid_of(15)


def test_resnet_global_equals_open_clip_encode_image(tiny_rn_clip):
    randomize_bn(tiny_rn_clip.visual)
    enc = CLIPResNetEncoder(tiny_rn_clip.visual).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = enc(x)
        ref = tiny_rn_clip.encode_image(x)
    torch.testing.assert_close(out.global_embedding, ref, atol=1e-5, rtol=0)


def test_resnet_stage_features_and_dense_shape(tiny_rn_clip):
    enc = CLIPResNetEncoder(tiny_rn_clip.visual).eval()
    x = torch.randn(1, 3, 96, 160)  # non-square
    with torch.no_grad():
        out = enc(x)
    assert enc.feature_strides == (4, 8, 16, 32)
    assert enc.feature_channels == (32, 64, 128, 256)  # width 8: 8*4*2^i
    for f, s, c in zip(out.features, enc.feature_strides, enc.feature_channels):
        assert f.shape == (1, c, 96 // s, 160 // s)
    assert out.dense.shape == (1, TINY_RN_ARCH["embed_dim"], 3, 5)


def _reference_attention_pool(pool, c5, src_grid):
    """Every token a query, with F.multi_head_attention_forward (sequence first), as the authors wrote it."""
    b, c, h, w = c5.shape
    x = c5.reshape(b, c, h * w).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    pos = pool.positional_embedding
    spatial = pos[1:].reshape(1, *src_grid, c).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=False).reshape(c, h * w).T
    x = x + torch.cat([pos[:1], spatial])[:, None, :]
    x, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=c, num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False)
    x = x.permute(1, 2, 0)
    return x[:, :, 0], x[:, :, 1:].reshape(b, -1, h, w)


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (128, 64)])
def test_resnet_dense_equals_reference_attention_pool(tiny_rn_clip, size):
    randomize_bn(tiny_rn_clip.visual)
    enc = CLIPResNetEncoder(tiny_rn_clip.visual, input_resolution=128).eval()  # pos grid 2x2 -> 4x4 at build
    assert enc.pos_grid == (4, 4) and enc.visual.attnpool.positional_embedding.shape[0] == 17
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = enc(x)
        g, d = _reference_attention_pool(enc.visual.attnpool, out.features[-1], (4, 4))
    torch.testing.assert_close(out.global_embedding, g, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.dense, d, atol=1e-5, rtol=1e-5)


def test_resnet_resize_at_build_matches_authors_load_resize(tiny_rn_clip):
    """The positional embedding is resized once (2x2 -> 16x16 for 512 px), bilinear, align_corners=False."""
    pos0 = tiny_rn_clip.visual.attnpool.positional_embedding.detach().clone()
    enc = CLIPResNetEncoder(tiny_rn_clip.visual, input_resolution=512)
    ref = resize_pos_embed(pos0, (2, 2), (16, 16))
    torch.testing.assert_close(enc.visual.attnpool.positional_embedding.detach(), ref)
    assert isinstance(enc.visual.attnpool.positional_embedding, torch.nn.Parameter)


def test_resnet_keeps_the_open_clip_tower_intact(tiny_rn_clip):
    enc = CLIPResNetEncoder(tiny_rn_clip.visual)
    assert enc.visual is tiny_rn_clip.visual
    assert set(enc.state_dict()) == {f"visual.{k}" for k in tiny_rn_clip.visual.state_dict()}


def test_resnet_without_embeddings_drops_the_attention_pool(tiny_rn_clip):
    enc = CLIPResNetEncoder(tiny_rn_clip.visual, embeddings=False)
    assert enc.embed_dim is None and not any("attnpool" in k for k in enc.state_dict())
    out = enc(torch.randn(1, 3, 64, 64))
    assert out.dense is None and out.global_embedding is None and len(out.features) == 4


def test_vit_faithful_global_equals_encode_image(tiny_vit_clip):
    enc = CLIPViTEncoder(tiny_vit_clip.visual, official_cls=False, out_indices=(0, 1, 2, 3)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = enc(x)
        ref = tiny_vit_clip.encode_image(x)
    torch.testing.assert_close(out.global_embedding, ref, atol=1e-5, rtol=0)


def _reference_vit_tokens(visual, x, official):
    """The authors' ViT embedding (class_embedding added twice when official) through all blocks."""
    x = visual.conv1(x)
    b, c, h, w = x.shape
    x = x.reshape(b, c, -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(b, 1, c), x], dim=1)
    pos = visual.positional_embedding
    cls_pos = pos[0] + (visual.class_embedding if official else 0)
    x = x + torch.cat([cls_pos[None], pos[1:]])[None]
    x = visual.ln_pre(x)
    outs = []
    for blk in visual.transformer.resblocks:
        x = blk(x)
        outs.append(x)
    return outs, (h, w)


@pytest.mark.parametrize("official", [True, False])
def test_vit_stage_maps_dense_and_official_class_token(tiny_vit_clip, official):
    enc = CLIPViTEncoder(tiny_vit_clip.visual, official_cls=official, out_indices=(0, 1, 2, 3)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = enc(x)
        outs, (h, w) = _reference_vit_tokens(tiny_vit_clip.visual, x, official)
        last = tiny_vit_clip.visual.ln_post(outs[-1]) @ tiny_vit_clip.visual.proj
        maps = [o[:, 1:].transpose(1, 2).reshape(1, -1, h, w) for o in outs]
    torch.testing.assert_close(out.global_embedding, last[:, 0], atol=1e-5, rtol=1e-5)
    dense = last[:, 1:].transpose(1, 2).reshape(1, -1, h, w)
    torch.testing.assert_close(out.dense, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.features[2], enc.fpn3(maps[2]), atol=1e-5, rtol=1e-5)
    assert [f.shape[-1] for f in out.features] == [16, 8, 4, 2]  # strides 4, 8, 16, 32 at 64 px
    if official:  # the double class embedding really changes the class token
        faithful = CLIPViTEncoder(tiny_vit_clip.visual, official_cls=False, out_indices=(0, 1, 2, 3)).eval()
        with torch.no_grad():
            assert not torch.allclose(faithful(x).global_embedding, out.global_embedding, atol=1e-4)


def test_vit_necks_structure_matches_authors(tiny_vit_clip):
    enc = CLIPViTEncoder(tiny_vit_clip.visual, out_indices=(0, 1, 2, 3))
    kinds = [type(m).__name__ for m in enc.fpn1]
    assert kinds == ["GroupNorm", "ConvTranspose2d", "BatchNorm2d", "GELU", "ConvTranspose2d"]
    assert [type(m).__name__ for m in enc.fpn2] == ["GroupNorm", "ConvTranspose2d"]
    assert isinstance(enc.fpn3, torch.nn.GroupNorm) and enc.fpn3.num_groups == 1
    assert [type(m).__name__ for m in enc.fpn4] == ["GroupNorm", "MaxPool2d"]
    keys = set(enc.state_dict())
    assert {"visual.class_embedding", "visual.positional_embedding", "visual.proj", "visual.conv1.weight",
            "fpn1.2.running_mean"} <= keys


def test_vit_pos_embed_resized_at_build_and_non_square(tiny_vit_clip):
    enc = CLIPViTEncoder(tiny_vit_clip.visual, input_resolution=128, out_indices=(0, 1, 2, 3)).eval()
    assert enc.visual.positional_embedding.shape[0] == 1 + 8 * 8
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 96, 160))
    assert out.dense.shape == (1, 32, 6, 10)


def test_vit_bad_out_indices(tiny_vit_clip):
    with pytest.raises(ValueError, match="out_indices"):
        CLIPViTEncoder(tiny_vit_clip.visual, out_indices=(3, 5, 7, 11))


def test_vit_drop_path_only_in_training(tiny_vit_clip):
    enc = CLIPViTEncoder(tiny_vit_clip.visual, out_indices=(0, 1, 2, 3), drop_path_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    enc.eval()
    with torch.no_grad():
        a, b = enc(x).dense, enc(x).dense
        plain = CLIPViTEncoder(make_clip(TINY_VIT_ARCH).visual, out_indices=(0, 1, 2, 3))
        plain.load_state_dict(enc.state_dict())
        ref = plain.eval()(x).dense
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-5)
    enc.train()
    torch.manual_seed(1)
    with torch.no_grad():
        c = enc(x).dense
    assert not torch.allclose(a, c)


def test_timm_encoder_any_backbone():
    enc = TimmEncoder("resnet18", embed_dim=32, pretrained=False).eval()
    assert enc.feature_strides == (4, 8, 16, 32) and enc.feature_channels == (64, 128, 256, 512)
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[2:]) for f in out.features] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert out.dense.shape == (1, 32, 2, 3)
    torch.testing.assert_close(out.global_embedding, out.dense.mean(dim=(2, 3)))


def test_timm_encoder_nhwc_models_become_nchw():
    enc = TimmEncoder("swin_tiny_patch4_window7_224", embed_dim=16, pretrained=False).eval()
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 224, 224))
    assert [f.shape[1] for f in out.features] == [96, 192, 384, 768]
    assert out.dense.shape == (1, 16, 7, 7)


def test_timm_encoder_unknown_name():
    with pytest.raises(ValueError, match="timm"):
        TimmEncoder("no_such_model_xyz", embed_dim=8)
