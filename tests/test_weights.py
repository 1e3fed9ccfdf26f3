"""Weights: safetensors round trips, CLIP weight sources, fast and helpful offline errors."""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import make_clip, randomize_bn

import denseclip
from denseclip.config import TINY_RN_ARCH, DenseCLIPConfig
from denseclip.weights import (
    WEIGHTS_DIR_ENV,
    WeightsUnavailableError,
    create_clip,
    hub_reachable,
    load_clip_state_dict,
)


@pytest.fixture
def trained_tiny():
    model = denseclip.build_model("denseclip-tiny-rn", pretrained=False)
    randomize_bn(model)
    with torch.no_grad():
        model.gamma.fill_(0.3)
        model.contexts.normal_()
    return model.eval()


def test_safetensors_file_round_trip_is_exact(tmp_path, trained_tiny):
    path = denseclip.save_checkpoint(trained_tiny, tmp_path / "m.safetensors", metadata={"iter": 7})
    assert path.is_file() and not list(tmp_path.glob("*.tmp"))
    loaded = denseclip.load_checkpoint(path)
    assert not loaded.training and loaded.cfg == trained_tiny.cfg
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained_tiny(x), atol=0, rtol=0)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["iter"] == "7" and json.loads(meta["denseclip_config"])["name"] == "denseclip-tiny-rn"


def test_folder_round_trip_and_class_override(tmp_path, trained_tiny):
    folder = tmp_path / "run"
    denseclip.save_checkpoint(trained_tiny, folder)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    cfg = DenseCLIPConfig.from_dict(json.loads((folder / "config.json").read_text()))
    assert cfg == trained_tiny.cfg
    names = ["water", "grass", "sand", "snow", "rock"]
    loaded = denseclip.load_checkpoint(folder, class_names=names)
    assert loaded.class_names == tuple(names)


def test_checkpoint_is_not_pickle(tmp_path, trained_tiny):
    path = denseclip.save_checkpoint(trained_tiny, tmp_path / "m.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then a JSON header


def test_load_mismatched_checkpoint_names_keys(tmp_path, trained_tiny):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in trained_tiny.state_dict().items()}
    del state["gamma"]
    meta = {"denseclip_config": trained_tiny.cfg.to_json()}
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="gamma"):
        denseclip.load_checkpoint(tmp_path / "bad.safetensors")


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        denseclip.load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        denseclip.load_checkpoint(tmp_path / "empty")


def test_hub_repo_offline_fails_fast_with_advice():
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="unreachable"):
        denseclip.load_checkpoint("someone/denseclip-rn50")
    assert time.perf_counter() - t0 < 10


def test_hub_reachable_respects_offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False


def test_create_clip_tag_offline_fails_fast_and_says_how(monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as e:
        create_clip("RN50", "openai")
    assert time.perf_counter() - t0 < 15
    assert WEIGHTS_DIR_ENV in str(e.value) and "pretrained=None" in str(e.value)


def test_create_clip_bad_tag_and_model():
    with pytest.raises(ValueError, match="available"):
        create_clip("RN50", "no-such-tag")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        create_clip("RN5000", None)
    with pytest.raises(FileNotFoundError, match="not found"):
        create_clip("RN50", "/no/such/file.pt")


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_create_clip_from_local_file(tmp_path, fmt):
    src = make_clip(TINY_RN_ARCH)
    randomize_bn(src)
    path = tmp_path / f"tiny.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    clip = create_clip("tiny", str(path), arch=TINY_RN_ARCH)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(clip.state_dict()[k], v)
    assert set(load_clip_state_dict(path)) == set(src.state_dict())


def test_create_clip_from_weights_dir(tmp_path, monkeypatch):
    """A tag is served from DENSECLIP_WEIGHTS_DIR before the Hub is asked."""
    import open_clip

    cfg_path = tmp_path / "tinyrn-dc.json"
    cfg_path.write_text(json.dumps(TINY_RN_ARCH))
    open_clip.add_model_config(str(cfg_path))
    src = open_clip.create_model("tinyrn-dc", pretrained=None, force_quick_gelu=True)
    from safetensors.torch import save_file

    wdir = tmp_path / "weights"
    wdir.mkdir()
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(wdir / "tinyrn-dc-openai.safetensors"))
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(wdir))
    clip = create_clip("tinyrn-dc", "openai")
    torch.testing.assert_close(clip.visual.attnpool.c_proj.weight, src.visual.attnpool.c_proj.weight)


def test_create_clip_quick_gelu_flag(tiny_rn_clip):
    from open_clip.transformer import QuickGELU

    q = create_clip("x", None, arch=TINY_RN_ARCH, quick_gelu=True)
    g = create_clip("x", None, arch=TINY_RN_ARCH, quick_gelu=False)
    assert isinstance(q.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert not isinstance(g.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_build_model_pretrained_offline_is_clear():
    with pytest.raises(WeightsUnavailableError):
        denseclip.build_model("denseclip-rn50-ade20k")  # OpenAI RN50 weights, hub unreachable in tests


def test_yaml_round_trip_and_preset_overrides(tmp_path):
    cfg = denseclip.get_preset("denseclip-vitb16-ade20k")
    cfg.save_yaml(tmp_path / "c.yaml")
    assert DenseCLIPConfig.load_yaml(tmp_path / "c.yaml") == cfg
    (tmp_path / "o.yaml").write_text("preset: denseclip-rn50-ade20k\nnum_contexts: 4\ntest:\n  mode: whole\n")
    o = DenseCLIPConfig.load_yaml(tmp_path / "o.yaml")
    assert o.num_contexts == 4 and o.test.mode == "whole" and o.test.crop == 512 and o.clip_model == "RN50"
    (tmp_path / "bad.yaml").write_text("num_contexs: 4\n")
    with pytest.raises(KeyError, match="num_contexs"):
        DenseCLIPConfig.load_yaml(tmp_path / "bad.yaml")


def test_presets_are_the_papers_settings():
    rn = denseclip.get_preset("denseclip-rn50-ade20k")
    assert (rn.clip_model, rn.input_resolution, rn.score_concat_index, rn.num_contexts, rn.class_token_budget,
            rn.decoder_width, rn.decoder_heads, rn.decoder_layers, rn.tau, rn.aux_loss_weight,
            rn.gamma_init, rn.num_classes) == ("RN50", 512, 3, 8, 5, 256, 4, 3, 0.07, 0.4, 1e-4, 150)
    assert rn.head_channels == 256 and rn.neck_channels == 256
    assert (rn.test.mode, rn.test.crop, rn.test.stride) == ("slide", 512, 341)
    vit = denseclip.get_preset("denseclip-vitb16-ade20k")
    assert (vit.clip_model, vit.input_resolution, vit.score_concat_index, vit.test.crop, vit.test.stride,
            vit.vit_out_indices) == ("ViT-B-16", 640, 2, 640, 426, (3, 5, 7, 11))
    assert not denseclip.get_preset("fpn-clip-rn101-ade20k").use_text
    assert set(denseclip.list_presets()) >= {"denseclip-rn101-ade20k", "fpn-clip-vitb16-ade20k", "denseclip-tiny-rn"}


def test_load_checkpoint_hands_detection_checkpoints_to_the_detector_loader(tmp_path):
    from denseclip.detection import DenseCLIPDetector, build_detector, save_detector

    det = build_detector("denseclip-retinanet-tiny", pretrained=False).eval()
    save_detector(det, tmp_path / "det")
    loaded = denseclip.load_checkpoint(tmp_path / "det")
    assert isinstance(loaded, DenseCLIPDetector) and loaded.cfg == det.cfg
    for k, v in det.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_lazy_public_names():
    assert denseclip.detect.__module__.startswith("denseclip.detection")
    assert denseclip.ZeroShotSegmenter.__module__ == "denseclip.zeroshot"
    with pytest.raises(AttributeError):
        denseclip.no_such_name  # noqa: B018
