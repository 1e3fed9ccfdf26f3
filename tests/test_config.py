"""One config system: nested dataclasses, one serialise/merge/validate path, one preset registry."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

import denseclip
from denseclip.config import (
    PRESETS,
    Config,
    DenseCLIPConfig,
    DetectionConfig,
    PromptConfig,
    TestConfig,
    config_from_dict,
    get_preset,
    list_presets,
    merge,
    resolve,
)


def test_round_trips_dict_json_yaml(tmp_path):
    for name in PRESETS:
        cfg = get_preset(name)
        assert type(cfg).from_dict(cfg.to_dict()) == cfg
        assert type(cfg).from_json(cfg.to_json()) == cfg
        cfg.save_yaml(tmp_path / "c.yaml")
        assert type(cfg).load_yaml(tmp_path / "c.yaml") == cfg
        assert json.loads(cfg.to_json()) == cfg.to_dict()  # tuples stored as lists, nothing else


def test_replace_merges_nested_configs_and_coerces_types():
    cfg = get_preset("denseclip-rn50-ade20k")
    new = cfg.replace(prompt={"num_contexts": 4}, test={"scales": [0.5, 1]}, class_names=["a", "b"])
    assert new.prompt.num_contexts == 4 and new.prompt.decoder_width == cfg.prompt.decoder_width
    assert new.test.scales == (0.5, 1.0) and isinstance(new.test.scales[1], float) and new.test.crop == 512
    assert new.class_names == ("a", "b") and cfg.prompt.num_contexts == 8  # the original is untouched
    assert cfg.replace(prompt=None).prompt is None and not cfg.replace(prompt=None).use_text
    assert cfg.replace(prompt=PromptConfig(num_contexts=2)).prompt == PromptConfig(num_contexts=2)
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_unknown_keys_are_named_at_every_level(tmp_path):
    with pytest.raises(KeyError, match=r"unknown DenseCLIPConfig field\(s\) \['num_contexs'\]"):
        DenseCLIPConfig.from_dict({"num_contexs": 4})
    with pytest.raises(KeyError, match=r"DenseCLIPConfig\.prompt.*'widht'.*valid fields"):
        DenseCLIPConfig.from_dict({"prompt": {"widht": 4}})
    with pytest.raises(KeyError, match=r"\.test"):
        DenseCLIPConfig.from_dict({"test": {"modes": "whole"}})
    with pytest.raises(TypeError, match="mapping"):
        DenseCLIPConfig.from_dict(["a"])
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        DenseCLIPConfig.load_yaml(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        DenseCLIPConfig.load_yaml(tmp_path / "nope.yaml")


def test_values_are_validated():
    with pytest.raises(ValueError, match="whole"):
        TestConfig(mode="sliding")
    with pytest.raises(ValueError, match="detector"):
        DetectionConfig(detector="yolo")
    with pytest.raises(ValueError, match="anchor_sizes"):
        DetectionConfig(anchor_sizes=(8, 16))


def test_presets_in_yaml_with_changes(tmp_path):
    (tmp_path / "o.yaml").write_text("preset: denseclip-rn50-ade20k\nprompt:\n  num_contexts: 4\n"
                                     "test:\n  mode: whole\n")
    o = DenseCLIPConfig.load_yaml(tmp_path / "o.yaml")
    assert o.prompt.num_contexts == 4 and o.prompt.decoder_layers == 3
    assert o.test.mode == "whole" and o.test.crop == 512 and o.clip_model == "RN50"
    det = DetectionConfig.from_dict({"preset": "denseclip-maskrcnn-tiny", "min_size": 64})
    assert det.detector == "maskrcnn" and det.min_size == 64
    with pytest.raises(TypeError, match="build_detector"):
        DenseCLIPConfig.from_dict({"preset": "denseclip-retinanet-tiny"})
    with pytest.raises(KeyError, match=r"unknown model field\(s\) \['num_contexts'\]"):
        DenseCLIPConfig.from_dict({"preset": "denseclip-tiny-rn", "num_contexts": 4}, "model")


def test_one_registry_for_both_tasks():
    seg, det = set(list_presets(DenseCLIPConfig)), set(list_presets(DetectionConfig))
    assert seg and det and not seg & det and seg | det == set(PRESETS) == set(list_presets())
    assert "denseclip-rn50-ade20k" in seg and "denseclip-maskrcnn-rn101-coco" in det
    for name in PRESETS:
        assert get_preset(name).name == name and get_preset(name) is not get_preset(name)
    with pytest.raises(KeyError, match="available presets"):
        get_preset("nope")
    with pytest.raises(TypeError, match="build_model"):
        resolve("denseclip-tiny-rn", DetectionConfig)
    tiny = resolve("denseclip-tiny-rn", DenseCLIPConfig, class_names=None)
    assert tiny.class_names == ("sky", "tree", "road", "person", "car")


def test_stored_configs_know_their_task():
    assert isinstance(config_from_dict(get_preset("retinanet-clip-tiny").to_dict()), DetectionConfig)
    assert isinstance(config_from_dict(get_preset("fpn-clip-tiny-rn").to_dict()), DenseCLIPConfig)


def test_prompting_fields_are_shared_by_both_tasks():
    seg, det = get_preset("denseclip-rn50-ade20k"), get_preset("denseclip-retinanet-rn50-coco")
    assert seg.prompt == det.prompt == PromptConfig()
    assert get_preset("retinanet-clip-rn50-coco").prompt is None
    assert get_preset("fpn-clip-rn50-ade20k").prompt is None
    shared = {"name", "clip_model", "clip_pretrained", "clip_arch", "quick_gelu", "input_resolution",
              "class_names", "prompt", "tau", "aux_loss_weight"}
    assert shared <= set(seg.to_dict()) and shared <= set(det.to_dict())


def test_presets_are_the_papers_settings():
    rn = get_preset("denseclip-rn50-ade20k")
    p = rn.prompt
    assert (rn.clip_model, rn.input_resolution, rn.score_concat_index, p.num_contexts, p.class_token_budget,
            p.decoder_width, p.decoder_heads, p.decoder_layers, rn.tau, rn.aux_loss_weight,
            p.gamma_init, rn.num_classes) == ("RN50", 512, 3, 8, 5, 256, 4, 3, 0.07, 0.4, 1e-4, 150)
    assert rn.head_channels == 256 and rn.neck_channels == 256 and p.freeze_text_encoder
    assert (rn.test.mode, rn.test.crop, rn.test.stride) == ("slide", 512, 341)
    vit = get_preset("denseclip-vitb16-ade20k")
    assert (vit.clip_model, vit.input_resolution, vit.score_concat_index, vit.test.crop, vit.test.stride,
            vit.vit_out_indices, vit.drop_path_rate) == ("ViT-B-16", 640, 2, 640, 426, (3, 5, 7, 11), 0.1)
    det = get_preset("denseclip-retinanet-rn50-coco")
    assert (det.input_resolution, det.min_size, det.max_size, det.aux_loss_weight, det.num_classes) == \
        (1344, 800, 1333, 1.0, 80)


def test_any_dataclass_can_join_the_config_system():
    @dataclass
    class Section(Config):
        steps: tuple[int, ...] = ()
        lr: float = 0.1
        inner: TestConfig = field(default_factory=TestConfig)

    s = Section.from_dict({"steps": [3, 4], "lr": 1, "inner": {"mode": "whole"}}, "train")
    assert s.steps == (3, 4) and isinstance(s.lr, float) and s.inner.mode == "whole"
    with pytest.raises(KeyError, match=r"unknown train field\(s\) \['step'\]"):
        Section.from_dict({"step": 1}, "train")


def test_public_names():
    names = ("DenseCLIPConfig", "DetectionConfig", "PromptConfig", "TestConfig", "get_preset", "list_presets")
    for name in names:
        assert hasattr(denseclip, name)
