"""The authors' released checkpoints: `denseclip.load_checkpoint(official.pth)` == their forward pass.

We cannot download their code or weights here, so `reference_authors.py` re-implements their forward
(sequence-first transformers, F.multi_head_attention_forward attention pool, mmseg FPN / FPNHead) and
saves small random models in the layout of their mmcv checkpoints; our loader must infer the
architecture from the tensors, load every tensor, and give the same logits (max relative error 1e-4).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference_authors import authors_resnet_denseclip, authors_slide_inference, authors_vit_denseclip
from torch import nn

import denseclip
from denseclip.config import DenseCLIPConfig
from denseclip.inference import _logits, slide
from denseclip.official import config_from_official, read_official_checkpoint, translate
from denseclip.vocab import ADE20K_CLASSES

RN_NAMES = tuple(ADE20K_CLASSES[:5])  # wall, building, sky, floor, tree
VIT_NAMES = tuple(ADE20K_CLASSES[:7])
TOL = 1e-4
# ResNet: pretrained grid 96/32 = 3x3; square at that grid (batch 2), non-square, odd (3x4 after floor-divs)
RN_SIZES = [(2, 96, 96), (1, 64, 128), (1, 97, 131)]
VIT_SIZES = [(2, 128, 128), (1, 96, 160), (1, 97, 131)]  # ViT: pretrained grid 128/16 = 8x8


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, norm affine params and BN running stats too; gamma in [0.1, 1]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.normal_(0, 0.1, generator=g)
                mod.running_var.uniform_(0.5, 1.5, generator=g)
                mod.num_batches_tracked.fill_(1000)
            for name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, _NORMS):
                    p.uniform_(0.5, 1.5, generator=g) if name == "weight" else p.normal_(0, 0.1, generator=g)
                elif name.endswith("bias"):
                    p.normal_(0, 0.05, generator=g)
                elif p.ndim >= 2:  # conv / linear / embedding / projection / positional: ~1/sqrt(fan_in)
                    p.normal_(0, 1 / math.sqrt(p[0].numel()), generator=g)
                else:  # class_embedding
                    p.normal_(0, 0.5, generator=g)
        if hasattr(model, "contexts"):
            model.contexts.normal_(0, 1, generator=g)
            model.gamma.uniform_(0.1, 1.0, generator=g)
            # let the score maps (the last K input channels of one lateral conv) weigh in the logits, so the
            # logits comparison is sensitive to the whole text path, not just the visual one
            k = model.decode_head.conv_seg.out_channels
            model.neck.lateral_convs[model.score_concat_index].conv.weight[:, -k:] *= 30
    return model.eval()


def mmcv_checkpoint(model: nn.Module, names) -> dict:
    """What mmcv's save_checkpoint writes: meta (with CLASSES, PALETTE), state_dict, optimizer."""
    meta = {"mmcv_version": "1.3.17", "time": "Thu Dec  2 12:00:00 2021", "env_info": "sys.platform: linux",
            "config": "model = dict(type='DenseCLIP', ...)", "seed": None, "exp_name": "denseclip.py",
            "CLASSES": tuple(names), "PALETTE": [[120, 120, 120]] * len(names), "iter": 80000,
            "hook_msgs": {"last_ckpt": "work_dirs/iter_80000.pth"}}
    return {"meta": meta, "state_dict": model.state_dict(),
            "optimizer": {"state": {},
                          "param_groups": [{"lr": 1e-6, "betas": (0.9, 0.999), "params": [0, 1]}]}}


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape, (tuple(ours.shape), tuple(theirs.shape))
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def check_parity(ours: nn.Module, ref: nn.Module, size) -> tuple[float, float]:
    """Decode-head logits (stride 4), logits resized to the image, and score maps: ours vs theirs."""
    x = image(*size, seed=sum(size))
    with torch.no_grad():
        theirs, theirs_s = ref.forward_with_score_map(x)
        out = ours.forward_dense(x)
        mine = out["logits"]
        e_head = rel_err(mine, theirs)
        e_full = rel_err(_logits(lambda _: mine, x), ref.resize_to(theirs, x))  # our resize code path
    assert mine.shape == (size[0], ref.decode_head.conv_seg.out_channels, *theirs.shape[2:])
    assert theirs.abs().max() > 1e-3  # a meaningful comparison, not two near-zero tensors
    assert e_head <= TOL, f"decode-head logits differ: max rel err {e_head:.2e} at {size}"
    assert e_full <= TOL, f"resized logits differ: max rel err {e_full:.2e} at {size}"
    if theirs_s is not None:  # the pixel-text score maps themselves (cosines in [-1, 1])
        assert (out["score_map"] - theirs_s).abs().max() <= TOL
    return e_head, e_full


# ---------------------------------------------------------------------------------------------
# fixtures: small models in the authors' layout, saved as their .pth files (built once per module)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rn_ref():
    torch.manual_seed(0)
    return randomize_(authors_resnet_denseclip(RN_NAMES, layers=(1, 2, 1, 1), input_resolution=96), seed=1)


@pytest.fixture(scope="module")
def rn_path(rn_ref, tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "denseclip_fpn_res_tiny.pth"
    torch.save(mmcv_checkpoint(rn_ref, RN_NAMES), path)
    return path


@pytest.fixture(scope="module")
def rn_loaded(rn_path):
    return denseclip.load_checkpoint(rn_path)


@pytest.fixture(scope="module")
def vit_ref():
    torch.manual_seed(0)
    return randomize_(authors_vit_denseclip(VIT_NAMES), seed=2)


@pytest.fixture(scope="module")
def vit_path(vit_ref, tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "denseclip_fpn_vit_tiny.pth"
    torch.save(mmcv_checkpoint(vit_ref, VIT_NAMES), path)
    return path


VIT_PRESET = DenseCLIPConfig(vit_out_indices=(0, 1, 2, 3))  # a 4-block ViT: taps after every block


@pytest.fixture(scope="module")
def vit_loaded(vit_path):
    return denseclip.load_checkpoint(vit_path, config=VIT_PRESET)


# ---------------------------------------------------------------------------------------------
# ResNet DenseCLIP
# ---------------------------------------------------------------------------------------------


def test_resnet_checkpoint_config_is_read_off_the_tensors(rn_loaded, rn_ref):
    m = rn_loaded
    cfg = m.cfg
    assert not m.training
    assert cfg.class_names == RN_NAMES
    assert cfg.clip_arch["vision_cfg"]["layers"] == [1, 2, 1, 1]
    p = cfg.prompt
    assert (p.num_contexts, p.class_token_budget, cfg.score_concat_index, cfg.use_text) == (8, 5, 3, True)
    assert (p.decoder_width, p.decoder_heads, p.decoder_layers) == (64, 1, 3)
    assert (cfg.neck_channels, cfg.head_channels, cfg.input_resolution) == (32, 16, 96)
    assert m.encoder.num_heads == rn_ref.backbone.attnpool.heads == 32
    # every tensor of their state dict (but the unused identity head) was loaded, bit for bit
    theirs = rn_ref.state_dict()
    ours = translate(theirs, use_text=True)
    assert len(ours) == len(theirs) - sum(k.startswith("identity_head.") for k in theirs)
    assert set(ours) == {k for k in m.state_dict() if not k.endswith("num_batches_tracked")} | \
        {k for k in ours if k.endswith("num_batches_tracked")}
    for k, v in ours.items():
        assert torch.equal(m.state_dict()[k], v), k
    expected = {"encoder.visual.attnpool.q_proj.weight", "prompting.contexts", "head.conv_seg.weight"}
    assert expected <= set(ours)


def test_key_translation_is_a_table_of_prefixes():
    sd = {"backbone.fpn1.0.weight": 1, "backbone.conv1.weight": 2, "text_encoder.ln_final.weight": 3,
          "context_decoder.out_proj.1.bias": 4, "contexts": 5, "gamma": 6, "decode_head.conv_seg.bias": 7,
          "neck.fpn_convs.0.conv.weight": 8, "identity_head.conv_seg.weight": 9}
    assert translate(sd, use_text=True) == {
        "encoder.fpn1.0.weight": 1, "encoder.visual.conv1.weight": 2,
        "prompting.text_encoder.ln_final.weight": 3,
        "prompting.context_decoder.out_proj.1.bias": 4, "prompting.contexts": 5, "prompting.gamma": 6,
        "head.conv_seg.bias": 7, "neck.fpn_convs.0.conv.weight": 8}
    assert translate({"backbone.attnpool.c_proj.bias": 1, "backbone.proj": 2}, use_text=False) == {}
    with pytest.raises(ValueError, match="unexpected tensor 'roi_head.x'"):
        translate({"roi_head.x": 1}, use_text=True)


@pytest.mark.parametrize("size", RN_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_resnet_logits_match_authors_forward(rn_loaded, rn_ref, size):
    check_parity(rn_loaded, rn_ref, size)


def test_resnet_context_decoder_matters(rn_loaded, rn_ref):
    """gamma is large enough that a wrong context decoder could not hide under the tolerance."""
    x = image(1, 64, 128, seed=5)
    with torch.no_grad():
        before = rn_ref(x)
        saved = rn_ref.gamma.detach().clone()
        rn_ref.gamma.zero_()
        try:
            no_decoder = rn_ref(x)
        finally:
            rn_ref.gamma.copy_(saved)
    assert rel_err(no_decoder, before) > 100 * TOL


def test_slide_inference_matches_authors(rn_loaded, rn_ref):
    x = image(1, 96, 150, seed=7)
    with torch.no_grad():
        ours = slide(lambda c: _logits(rn_loaded, c), x, 96, 64)
        err = rel_err(ours, authors_slide_inference(rn_ref, x, 96, 64))
    assert err <= TOL


# ---------------------------------------------------------------------------------------------
# ViT DenseCLIP (their forward adds class_embedding twice to the class token)
# ---------------------------------------------------------------------------------------------


def test_vit_checkpoint_config_is_read_off_the_tensors(vit_loaded):
    cfg = vit_loaded.cfg
    assert "patch_size" in cfg.clip_arch["vision_cfg"] and cfg.vit_official_cls
    assert cfg.class_names == VIT_NAMES
    assert (cfg.score_concat_index, cfg.prompt.num_contexts, cfg.prompt.class_token_budget) == (2, 8, 5)
    assert cfg.vit_out_indices == (0, 1, 2, 3)
    assert cfg.clip_arch["vision_cfg"]["layers"] == 4 and cfg.clip_arch["vision_cfg"]["patch_size"] == 16


@pytest.mark.parametrize("size", VIT_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_vit_logits_match_authors_forward(vit_loaded, vit_ref, size):
    check_parity(vit_loaded, vit_ref, size)


def test_vit_class_token_convention_matters(vit_loaded, vit_ref):
    """Their global embedding (class token with class_embedding twice) is ours with official_cls=True, and
    the open_clip-faithful class token (official_cls=False) is measurably different: the tests can tell."""
    x = image(1, 128, 128, seed=3)
    with torch.no_grad():
        theirs_global, theirs_dense = vit_ref.backbone(x)[4]
        ours = vit_loaded.encoder(x)
        vit_loaded.encoder.official_cls = False
        try:
            faithful = vit_loaded.encoder(x).global_embedding
        finally:
            vit_loaded.encoder.official_cls = True
    assert rel_err(ours.global_embedding, theirs_global) <= TOL and rel_err(ours.dense, theirs_dense) <= TOL
    assert rel_err(faithful, theirs_global) > 100 * TOL


def test_vit_depth_other_than_the_default_taps_is_a_clear_error(vit_path):
    """Without a preset the loader assumes ViT-B/16's out_indices (3, 5, 7, 11)."""
    with pytest.raises(ValueError, match="out_indices"):
        denseclip.load_checkpoint(vit_path)


# ---------------------------------------------------------------------------------------------
# CLIP + FPN baselines (no text): mmseg's EncoderDecoder
# ---------------------------------------------------------------------------------------------


def test_baseline_with_attention_pool_matches(tmp_path):
    """A text-free checkpoint (no text_encoder/contexts/gamma) whose backbone kept the attention pool."""
    torch.manual_seed(0)
    ref = randomize_(authors_resnet_denseclip(RN_NAMES, layers=(1, 1, 1, 1), width=16, with_text=False,
                                              attention=True), seed=4)
    torch.save(mmcv_checkpoint(ref, RN_NAMES), tmp_path / "fpn_clip.pth")
    m = denseclip.load_checkpoint(tmp_path / "fpn_clip.pth")
    assert not m.cfg.use_text and m.cfg.class_names == RN_NAMES
    check_parity(m, ref, (1, 96, 160))


@pytest.mark.parametrize("arch", ["rn", "vit"])
def test_authors_baseline_layout_loads(tmp_path, arch):
    torch.manual_seed(0)
    if arch == "rn":
        ref = authors_resnet_denseclip(RN_NAMES, layers=(1, 1, 1, 1), width=16, with_text=False,
                                       attention=False)
    else:
        ref = authors_vit_denseclip(RN_NAMES, with_text=False)
    randomize_(ref, seed=6)
    torch.save(mmcv_checkpoint(ref, RN_NAMES), tmp_path / "fpn_clip.pth")
    preset = VIT_PRESET if arch == "vit" else None
    m = denseclip.load_checkpoint(tmp_path / "fpn_clip.pth", config=preset)
    check_parity(m, ref, (1, 96, 160))


# ---------------------------------------------------------------------------------------------
# safety and errors
# ---------------------------------------------------------------------------------------------

EXECUTED: list[str] = []


def _record(msg: str) -> str:
    EXECUTED.append(msg)
    return msg


class Payload:
    """Unpickling this would run code (`_record`): a weights_only load must refuse it."""

    def __reduce__(self):
        return (_record, ("pickled code ran",))


def test_pickled_python_objects_are_refused(rn_ref, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"meta": {"CLASSES": RN_NAMES, "hook": Payload()}, "state_dict": rn_ref.state_dict()}, path)
    EXECUTED.clear()
    with pytest.raises(Exception, match="weights_only") as info:
        denseclip.load_checkpoint(path)
    assert str(path) in str(info.value)
    assert EXECUTED == []


def test_numpy_values_in_mmcv_meta_are_accepted(tmp_path):
    state = {"decode_head.conv_seg.weight": torch.zeros(3, 4, 1, 1), "neck.x": torch.ones(2)}
    ckpt = {"meta": {"CLASSES": ("a", "b", "c"), "best_score": np.float64(0.43), "seed": np.int64(5),
                     "hist": np.arange(3)}, "state_dict": state}
    torch.save(ckpt, tmp_path / "np.pth")
    got, meta = read_official_checkpoint(tmp_path / "np.pth")
    assert set(got) == set(state) and meta["CLASSES"] == ("a", "b", "c")


def _save_modified(rn_ref, tmp_path, change) -> str:
    sd = dict(rn_ref.state_dict())
    change(sd)
    path = tmp_path / "bad.pth"
    torch.save({"meta": {"CLASSES": RN_NAMES}, "state_dict": sd}, path)
    return str(path)


@pytest.mark.parametrize("key,change", [
    ("decode_head.scale_heads.2.0.bn.running_mean",
     lambda sd: sd.pop("decode_head.scale_heads.2.0.bn.running_mean")),
    ("context_decoder.decoder.1.mlp.0.weight",
     lambda sd: sd.update({"context_decoder.decoder.1.mlp.0.weight": torch.zeros(3, 64)})),
    ("backbone.layer9.0.conv1.weight",
     lambda sd: sd.update({"backbone.layer9.0.conv1.weight": torch.zeros(1)})),
    ("backbone.attnpool.positional_embedding", lambda sd: sd.pop("backbone.attnpool.positional_embedding")),
], ids=["missing", "wrong-shape", "unexpected", "missing-arch-key"])
def test_mismatched_checkpoint_names_the_key(rn_ref, tmp_path, key, change):
    path = _save_modified(rn_ref, tmp_path, change)
    with pytest.raises(Exception, match=key.replace(".", r"\.")):
        denseclip.load_checkpoint(path)


def test_not_a_segmentation_checkpoint(tmp_path):
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(2, 3, 3, 3)}}, tmp_path / "clip.pth")
    with pytest.raises(ValueError, match="decode_head.conv_seg"):
        denseclip.load_checkpoint(tmp_path / "clip.pth")


# ---------------------------------------------------------------------------------------------
# class names: meta["CLASSES"], ADE20K fallback for 150 classes, otherwise a clear error
# ---------------------------------------------------------------------------------------------


def _shapes_with_classes(rn_ref, k: int) -> dict[str, torch.Tensor]:
    """rn_ref's state dict with the class count changed to k (only what config_from_official reads)."""
    sd = dict(rn_ref.state_dict())
    sd["decode_head.conv_seg.weight"] = torch.zeros(k, 16, 1, 1)
    sd["neck.lateral_convs.3.conv.weight"] = torch.zeros(32, 64 * 32 + k, 1, 1)
    return sd


def test_150_classes_without_meta_fall_back_to_ade20k(rn_ref):
    cfg = config_from_official(_shapes_with_classes(rn_ref, 150), {})
    assert cfg.class_names == tuple(ADE20K_CLASSES) and cfg.num_classes == 150
    assert cfg.score_concat_index == 3


def test_150_class_checkpoint_without_classes_loads_with_ade20k_names(tmp_path):
    """Also the ViT-B/16 layout without a preset: 12 blocks, taps (3, 5, 7, 11), 150 classes."""
    torch.manual_seed(0)
    ref = randomize_(authors_vit_denseclip(ADE20K_CLASSES, layers=12, out_indices=(3, 5, 7, 11),
                                           text_layers=1, decoder_layers=1), seed=8)
    ckpt = mmcv_checkpoint(ref, ADE20K_CLASSES)
    del ckpt["meta"]["CLASSES"]
    torch.save(ckpt, tmp_path / "ade.pth")
    m = denseclip.load_checkpoint(tmp_path / "ade.pth")
    assert m.cfg.class_names == tuple(ADE20K_CLASSES) and m.cfg.vit_out_indices == (3, 5, 7, 11)
    check_parity(m, ref, (1, 96, 128))


def test_other_class_counts_without_names_are_a_clear_error(rn_ref):
    with pytest.raises(ValueError, match="class_names"):
        config_from_official(_shapes_with_classes(rn_ref, 5), {})
    base = DenseCLIPConfig(class_names=RN_NAMES)
    cfg = config_from_official(_shapes_with_classes(rn_ref, 5), {}, base=base)
    assert cfg.class_names == RN_NAMES


def test_class_names_argument_rescues_a_checkpoint_without_classes(rn_ref, tmp_path):
    ckpt = mmcv_checkpoint(rn_ref, RN_NAMES)
    del ckpt["meta"]["CLASSES"]
    torch.save(ckpt, tmp_path / "nameless.pth")
    m = denseclip.load_checkpoint(tmp_path / "nameless.pth", class_names=RN_NAMES)
    assert m.cfg.class_names == RN_NAMES


def test_class_names_argument_overrides_meta(rn_path):
    names = ("a wall", "a building", "the sky", "a floor", "a tree")
    m = denseclip.load_checkpoint(rn_path, class_names=names)
    assert m.cfg.class_names == names
