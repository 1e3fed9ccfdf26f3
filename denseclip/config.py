"""Typed configs for DenseCLIP models, named presets, YAML load/save.

A config is a plain dataclass: everything that decides the architecture and the losses is here,
so that a checkpoint (safetensors + this config as JSON) rebuilds the exact model.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .vocab import ADE20K_CLASSES

# OpenAI CLIP normalisation (the authors' img_norm_cfg is the same numbers times 255).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TestConfig:
    """The test pipeline: resize (short side, capped long side), then whole or sliding-window inference."""

    mode: str = "slide"  # "whole" | "slide"
    crop: int = 512  # sliding-window crop (square)
    stride: int = 341  # sliding-window stride
    short_side: int = 512  # resize so the short side is this (mmseg img_scale=(2048, 512), keep_ratio)
    max_long_side: int = 2048  # ... unless that makes the long side exceed this
    scales: tuple[float, ...] = (1.0,)  # multi-scale test ratios (the authors: 0.5 .. 1.75)
    flip: bool = False  # add horizontally flipped predictions


@dataclass
class DenseCLIPConfig:
    """Everything that defines a DenseCLIP (or CLIP+FPN baseline) segmentor.

    Defaults are the authors' RN50 ADE20K setting (configs/denseclip_fpn_res50_512x512_80k.py).
    """

    name: str = "custom"
    # --- CLIP towers (open_clip) ---
    clip_model: str = "RN50"  # open_clip model name (RN50, RN101, ViT-B-16, ...)
    clip_pretrained: str | None = "openai"  # open_clip tag, a local file, or None for random weights
    clip_arch: dict | None = None  # explicit open_clip config (embed_dim, vision_cfg, text_cfg): tiny models
    quick_gelu: bool = True  # OpenAI weights were trained with QuickGELU
    # --- visual encoder ---
    backbone: str = "clip"  # "clip" = the CLIP image tower; otherwise a timm model name (any backbone)
    backbone_pretrained: bool = True  # timm backbones only: ImageNet weights from timm
    input_resolution: int = 512  # positional embeddings are resized to this grid once, at build
    vit_out_indices: tuple[int, ...] = (3, 5, 7, 11)  # ViT blocks whose tokens become stage features
    vit_official_cls: bool = True  # authors' forward: the class token gets class_embedding twice
    drop_path_rate: float = 0.0  # ViT stochastic depth (the authors: 0.1 for ViT-B/16)
    # --- classes and prompting ---
    class_names: tuple[str, ...] = ADE20K_CLASSES
    use_text: bool = True  # False: the CLIP + FPN baseline (no text, no score maps, no aux loss)
    num_contexts: int = 8  # M learnable context vectors
    class_token_budget: int = 5  # tokens for [SOT] name [EOT]; longer names are an error
    context_init: str | None = None  # init the contexts from a phrase ("a photo of a"), else trunc_normal
    context_decoder: bool = True  # post-model, vision-to-language prompting
    pre_model_prompting: bool = False  # ablation: contexts generated from the image (pre-model)
    decoder_width: int = 256
    decoder_heads: int = 4
    decoder_layers: int = 3
    decoder_dropout: float = 0.1
    gamma_init: float = 1e-4  # the paper's 1e-3 is a typo; the code uses 1e-4
    freeze_text_encoder: bool = True  # our recipe freezes it truly (the authors' drifted via min_lr)
    # --- score maps, dense head, losses ---
    score_concat_index: int = 3  # stage that receives the score maps (3 for ResNets, 2 for ViT)
    neck_channels: int = 256
    head_channels: int = 256  # the authors' denseclip_r50.py / fpn_clip configs: channels=256
    head_dropout: float = 0.1
    tau: float = 0.07  # temperature of the auxiliary pixel-text loss
    aux_loss_weight: float = 0.4
    ignore_index: int = 255
    loss_avg_non_ignore: bool = False  # mmseg 0.x averaged CE over all pixels, ignored ones included
    # --- test pipeline ---
    test: TestConfig = field(default_factory=TestConfig)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_vit(self) -> bool:
        if self.backbone != "clip":
            return False
        if self.clip_arch is not None:
            return "patch_size" in self.clip_arch.get("vision_cfg", {})
        return self.clip_model.upper().startswith("VIT")

    def replace(self, **changes: Any) -> DenseCLIPConfig:
        """A copy with some fields changed (nested `test` accepts a dict of its fields)."""
        if isinstance(changes.get("test"), dict):
            changes["test"] = dataclasses.replace(self.test, **changes["test"])
        _check_keys(changes, DenseCLIPConfig)
        return dataclasses.replace(self, **changes)

    # --- serialisation ---
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        d["vit_out_indices"] = list(self.vit_out_indices)
        d["test"]["scales"] = list(self.test.scales)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DenseCLIPConfig:
        d = dict(d)
        _check_keys(d, cls)
        test = d.pop("test", None)
        for key in ("class_names", "vit_out_indices"):
            if key in d:
                d[key] = tuple(d[key])
        cfg = cls(**d)
        if test is not None:
            test = dict(test)
            _check_keys(test, TestConfig)
            if "scales" in test:
                test["scales"] = tuple(float(s) for s in test["scales"])
            cfg.test = TestConfig(**test)
        return cfg

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> DenseCLIPConfig:
        return cls.from_dict(json.loads(text))

    def save_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True), "utf-8")

    @classmethod
    def load_yaml(cls, path: str | Path) -> DenseCLIPConfig:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text("utf-8")) or {}
        if "preset" in data:  # a YAML may start from a preset and override fields
            base = get_preset(data.pop("preset"))
            merged = base.to_dict()
            test = {**merged.pop("test"), **data.pop("test", {})}
            merged.update(data)
            merged["test"] = test
            data = merged
        return cls.from_dict(data)


def _check_keys(d: dict, cls: type) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - valid)
    if unknown:
        raise KeyError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(valid)}")


# ---------------------------------------------------------------------------------------------
# Presets. The paper's ADE20K settings, their CLIP+FPN baselines, and tiny random models for tests.
# ---------------------------------------------------------------------------------------------

# Tiny open_clip architectures (random weights, built in ~0.1 s, no network).
TINY_RN_ARCH = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_VIT_ARCH = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 32, "layers": 4, "head_width": 16,
                   "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_CLASSES = ("sky", "tree", "road", "person", "car")

ADE_SLIDE_512 = TestConfig(mode="slide", crop=512, stride=341, short_side=512, max_long_side=2048)
ADE_SLIDE_640 = TestConfig(mode="slide", crop=640, stride=426, short_side=640, max_long_side=2048)  # img_scale (2048, 640)


def _rn(name: str, clip_model: str, use_text: bool) -> DenseCLIPConfig:
    return DenseCLIPConfig(name=name, clip_model=clip_model, use_text=use_text, input_resolution=512,
                           score_concat_index=3, test=dataclasses.replace(ADE_SLIDE_512))


def _vit(name: str, use_text: bool) -> DenseCLIPConfig:
    return DenseCLIPConfig(name=name, clip_model="ViT-B-16", use_text=use_text, input_resolution=640,
                           score_concat_index=2, drop_path_rate=0.1, test=dataclasses.replace(ADE_SLIDE_640))


def _tiny(name: str, arch: dict, use_text: bool, concat: int) -> DenseCLIPConfig:
    return DenseCLIPConfig(
        name=name, clip_model=name, clip_pretrained=None, clip_arch=json.loads(json.dumps(arch)),
        input_resolution=64, class_names=TINY_CLASSES, use_text=use_text, num_contexts=4,
        class_token_budget=5, decoder_width=32, decoder_heads=2, decoder_layers=1, neck_channels=16,
        head_channels=16, score_concat_index=concat, vit_out_indices=(0, 1, 2, 3),
        test=TestConfig(mode="whole", crop=64, stride=48, short_side=64, max_long_side=256))


PRESETS = {
    "denseclip-rn50-ade20k": lambda: _rn("denseclip-rn50-ade20k", "RN50", True),
    "denseclip-rn101-ade20k": lambda: _rn("denseclip-rn101-ade20k", "RN101", True),
    "denseclip-vitb16-ade20k": lambda: _vit("denseclip-vitb16-ade20k", True),
    "fpn-clip-rn50-ade20k": lambda: _rn("fpn-clip-rn50-ade20k", "RN50", False),
    "fpn-clip-rn101-ade20k": lambda: _rn("fpn-clip-rn101-ade20k", "RN101", False),
    "fpn-clip-vitb16-ade20k": lambda: _vit("fpn-clip-vitb16-ade20k", False),
    "denseclip-tiny-rn": lambda: _tiny("denseclip-tiny-rn", TINY_RN_ARCH, True, 3),
    "denseclip-tiny-vit": lambda: _tiny("denseclip-tiny-vit", TINY_VIT_ARCH, True, 2),
    "fpn-clip-tiny-rn": lambda: _tiny("fpn-clip-tiny-rn", TINY_RN_ARCH, False, 3),
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> DenseCLIPConfig:
    """A fresh copy of a named preset config."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; available presets: {list_presets()}") from None


def resolve_config(preset_or_config, get: Callable[[str], Any], class_names=None, **overrides):
    """A config from a preset name (looked up with `get`) or a config object, with `class_names` and
    other fields replaced: the shared first step of `build_model` and `build_detector`."""
    cfg = get(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    if class_names is not None:
        overrides["class_names"] = tuple(class_names)
    return cfg.replace(**overrides) if overrides else cfg
