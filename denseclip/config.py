"""Typed configs, one load/merge/validate/serialise path, and one registry of presets.

    cfg = denseclip.get_preset("denseclip-rn50-ade20k")               # a fresh DenseCLIPConfig
    cfg = cfg.replace(prompt={"num_contexts": 4}, class_names=("sky", "tree"))   # nested dicts merge
    cfg = DenseCLIPConfig.from_dict({"preset": "denseclip-rn50-ade20k", "test": {"mode": "whole"}})
    cfg.to_dict(), cfg.to_json(), cfg.save_yaml("model.yaml")

A config holds everything that decides a model's architecture and losses, so a checkpoint (weights + the
config as JSON) rebuilds the exact model. The prompting fields are one nested dataclass (`PromptConfig`)
shared by segmentation and detection; `prompt=None` is the CLIP baseline without a text side.
The training engine's sections (`train:`, `data:`) are `Config`s too and go through the same code.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from .vocab import ADE20K_CLASSES, COCO_CLASSES

# OpenAI CLIP normalisation (the authors' img_norm_cfg is the same numbers times 255).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

C = TypeVar("C", bound="Config")


# --------------------------------------------------------------------------------- the one serialisation path

def to_plain(value: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists, recursively: what JSON and YAML store."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def merge(base: Mapping, changes: Mapping) -> dict:
    """`base` with `changes` applied; a dict change to a dict field is merged key by key (nested configs)."""
    out = dict(base)
    for key, value in changes.items():
        value = to_plain(value)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """A plain value as the field type wants it: nested configs from dicts, tuples from lists."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or len(options) != 1:
            return value
        return _coerce(value, options[0], where)
    if isinstance(tp, type) and issubclass(tp, Config) and isinstance(value, Mapping):
        return tp.from_dict(value, where)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            raise ValueError(f"{where} takes {len(kinds)} values, got {len(value)}: {list(value)}")
        return tuple(_coerce(v, k, where) for v, k in zip(value, kinds))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


class Config:
    """Base of every config dataclass: dict / JSON / YAML round trips, unknown keys refused by name."""

    def to_dict(self) -> dict:
        return to_plain(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping, where: str | None = None) -> C:
        where = where or cls.__name__
        if not isinstance(data, Mapping):
            raise TypeError(f"{where} must be a mapping of fields, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        valid = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise KeyError(f"unknown {where} field(s) {unknown}; valid fields: {sorted(valid)}")
        return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()})

    def replace(self: C, **changes: Any) -> C:
        """A copy with fields changed; nested configs take a dict of their fields (merged)."""
        return self.from_dict(merge(self.to_dict(), changes))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    def save_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True), "utf-8")

    @classmethod
    def load_yaml(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(read_yaml(path), str(path))


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file, with errors that name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text("utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of fields, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------- model configs

@dataclass
class TestConfig(Config):
    """The test pipeline: resize (short side, capped long side), then whole or sliding-window inference."""

    __test__ = False  # not a pytest test class

    mode: str = "slide"  # "whole" | "slide"
    crop: int = 512  # sliding-window crop (square)
    stride: int = 341  # sliding-window stride
    short_side: int = 512  # resize so the short side is this (mmseg img_scale=(2048, 512), keep_ratio)
    max_long_side: int = 2048  # ... unless that makes the long side exceed this
    scales: tuple[float, ...] = (1.0,)  # multi-scale test ratios (the authors: 0.5 .. 1.75)
    flip: bool = False  # add horizontally flipped predictions
    batch: int = 4  # sliding windows per forward pass (memory, not results)

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"test mode must be 'whole' or 'slide', got {self.mode!r}")
        sizes = (self.crop, self.stride, self.short_side, self.max_long_side, self.batch)
        if min(sizes) < 1 or not self.scales:
            raise ValueError(f"test crop, stride, sizes and batch must be positive, scales non-empty: {self}")


@dataclass
class PromptConfig(Config):
    """Context-aware prompting (paper Sec. 3.3), the same for segmentation and detection."""

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
    freeze_text_encoder: bool = True  # the one switch; unfrozen, it trains at the backbone's lr multiplier


@dataclass
class ModelConfig(Config):
    """What every DenseCLIP model has: CLIP towers, classes, the text side and its score-map loss."""

    name: str = "custom"
    clip_model: str = "RN50"  # open_clip model name (RN50, RN101, ViT-B-16, ...)
    clip_pretrained: str | None = "openai"  # open_clip tag, a local file, or None for random weights
    clip_arch: dict | None = None  # explicit open_clip config (embed_dim, vision_cfg, text_cfg): tiny models
    quick_gelu: bool = True  # OpenAI weights were trained with QuickGELU
    input_resolution: int = 512  # positional embeddings are resized to this grid once, at build
    class_names: tuple[str, ...] = ADE20K_CLASSES
    prompt: PromptConfig | None = field(default_factory=PromptConfig)  # None: the CLIP baseline, no text
    tau: float = 0.07  # temperature of the pixel-text score maps in the auxiliary loss
    aux_loss_weight: float = 0.4

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def use_text(self) -> bool:
        """False for the CLIP baseline: no text encoder, no score maps, no auxiliary loss."""
        return self.prompt is not None

    @classmethod
    def from_dict(cls: type[C], data: Mapping, where: str | None = None) -> C:
        """Fields, or {"preset": name, **changes}: a registered preset with changes merged in."""
        if isinstance(data, Mapping) and "preset" in data:
            data = dict(data)
            base = resolve(data.pop("preset"), cls)
            data = merge(base.to_dict(), data)
        return super().from_dict(data, where)


@dataclass
class DenseCLIPConfig(ModelConfig):
    """A DenseCLIP segmentor (or the CLIP+FPN baseline with `prompt=None`).

    Defaults are the authors' RN50 ADE20K setting (configs/denseclip_fpn_res50_512x512_80k.py).
    """

    backbone: str = "clip"  # "clip" = the CLIP image tower; otherwise a timm model name (any backbone)
    backbone_pretrained: bool = True  # timm backbones only: ImageNet weights from timm
    vit_out_indices: tuple[int, ...] = (3, 5, 7, 11)  # ViT blocks whose tokens become stage features
    vit_official_cls: bool = True  # authors' forward: the class token gets class_embedding twice
    drop_path_rate: float = 0.0  # ViT stochastic depth (the authors: 0.1 for ViT-B/16)
    score_concat_index: int = 3  # stage that receives the score maps (3 for ResNets, 2 for ViT)
    neck_channels: int = 256
    head_channels: int = 256  # the authors' denseclip_r50.py / fpn_clip configs: channels=256
    head_dropout: float = 0.1
    ignore_index: int = 255
    loss_avg_non_ignore: bool = False  # mmseg 0.x averaged CE over all pixels, ignored ones included
    test: TestConfig = field(default_factory=TestConfig)


@dataclass
class DetectionConfig(ModelConfig):
    """A DenseCLIP detector on torchvision's RetinaNet / Mask R-CNN (the baseline with `prompt=None`).

    Defaults are the authors' RetinaNet RN50 COCO setting (retinanet_denseclip_r50_fpn_1x_coco.py): CLIP
    RN50 at 1344, score maps / tau concatenated onto C5, FPN 256, images resized to 1333x800.
    """

    input_resolution: int = 1344  # attention-pool positional embedding resized to 42x42 once, at build
    class_names: tuple[str, ...] = COCO_CLASSES
    aux_loss_weight: float = 1.0  # the authors add their box-target BCE ("loss_aux_seg") unweighted
    detector: str = "retinanet"  # "retinanet" (P3-P7) | "maskrcnn" (P2-P6, box + mask heads)
    pos_embed: str = "crop"  # per image: "crop" the 42x42 grid to the feature map (the authors), or "resize"
    fpn_channels: int = 256
    min_size: int = 800  # short side -> 800 ...
    max_size: int = 1333  # ... unless the long side would exceed 1333 (mmdet img_scale=(1333, 800))
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # base anchor size per pyramid level
    score_thresh: float = 0.05  # test: detections below are dropped before NMS (mmdet score_thr)
    nms_thresh: float = 0.5
    detections_per_img: int = 100  # COCO evaluates at most 100 per image
    nms_pre: int = 1000  # RetinaNet test: best anchors kept per level before NMS (mmdet nms_pre)
    # mmdetection 2.x test-time semantics (the authors' checkpoints; see denseclip/detection/mmdet.py):
    # unrounded anchors on fixed strides, no ReLU before P7, mmcv RoIAlign, mmdet's resize / decode / NMS
    # order / mask pasting. False: torchvision's defaults (our own trained models).
    mmdet_compat: bool = False
    # --- Mask R-CNN only (mmdet mask_rcnn_r50_fpn values) ---
    rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000)  # (train, test), per level
    rpn_post_nms_top_n: tuple[int, int] = (1000, 1000)  # (train, test), per image
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_head_dim: int = 1024  # TwoMLPHead representation size
    mask_head_channels: int = 256  # 4 convs of this width in the mask head

    def __post_init__(self) -> None:
        if self.detector not in ("retinanet", "maskrcnn"):
            raise ValueError(f"detector must be 'retinanet' or 'maskrcnn', got {self.detector!r}")
        if self.pos_embed not in ("crop", "resize"):
            raise ValueError(f"pos_embed must be 'crop' or 'resize', got {self.pos_embed!r}")
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per pyramid level (5), got {self.anchor_sizes}")
        if self.nms_pre < 1 or not (0 < self.nms_thresh <= 1 and 0 < self.rpn_nms_thresh <= 1):
            raise ValueError("nms_pre must be positive and NMS IoU thresholds in (0, 1]: "
                             f"nms_pre={self.nms_pre}, nms_thresh={self.nms_thresh}, "
                             f"rpn_nms_thresh={self.rpn_nms_thresh}")

    @property
    def with_masks(self) -> bool:
        return self.detector == "maskrcnn"


def config_from_dict(data: Mapping) -> ModelConfig:
    """A stored model config (a checkpoint's JSON): a DetectionConfig if it names a detector."""
    return (DetectionConfig if "detector" in data else DenseCLIPConfig).from_dict(data)


# -------------------------------------- presets: the paper's settings, their CLIP baselines, tiny test models

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
TINY_DET_CLASSES = ("red box", "green ellipse", "blue box")  # the synthetic COCO-format data's categories
TINY_PROMPT = PromptConfig(num_contexts=4, decoder_width=32, decoder_heads=2, decoder_layers=1)

ADE_SLIDE_512 = TestConfig(mode="slide", crop=512, stride=341, short_side=512, max_long_side=2048)
ADE_SLIDE_640 = TestConfig(mode="slide", crop=640, stride=426, short_side=640, max_long_side=2048)


def _prompt(text: bool, tiny: bool = False) -> PromptConfig | None:
    return (dataclasses.replace(TINY_PROMPT) if tiny else PromptConfig()) if text else None


def _ade_rn(name: str, clip_model: str, text: bool) -> DenseCLIPConfig:
    return DenseCLIPConfig(name=name, clip_model=clip_model, prompt=_prompt(text), input_resolution=512,
                           score_concat_index=3, test=dataclasses.replace(ADE_SLIDE_512))


def _ade_vit(name: str, text: bool) -> DenseCLIPConfig:
    return DenseCLIPConfig(name=name, clip_model="ViT-B-16", prompt=_prompt(text), input_resolution=640,
                           score_concat_index=2, drop_path_rate=0.1, test=dataclasses.replace(ADE_SLIDE_640))


def _tiny_seg(name: str, arch: dict, text: bool, concat: int) -> DenseCLIPConfig:
    return DenseCLIPConfig(
        name=name, clip_model=name, clip_pretrained=None, clip_arch=json.loads(json.dumps(arch)),
        input_resolution=64, class_names=TINY_CLASSES, prompt=_prompt(text, tiny=True), neck_channels=16,
        head_channels=16, score_concat_index=concat, vit_out_indices=(0, 1, 2, 3),
        test=TestConfig(mode="whole", crop=64, stride=48, short_side=64, max_long_side=256))


def _coco(name: str, detector: str, clip_model: str, text: bool) -> DetectionConfig:
    return DetectionConfig(name=name, detector=detector, clip_model=clip_model, prompt=_prompt(text))


def _tiny_det(name: str, detector: str, text: bool) -> DetectionConfig:
    return DetectionConfig(
        name=name, detector=detector, clip_model=name, clip_pretrained=None,
        clip_arch=json.loads(json.dumps(TINY_RN_ARCH)), input_resolution=128, class_names=TINY_DET_CLASSES,
        prompt=_prompt(text, tiny=True), fpn_channels=32, min_size=96, max_size=128,
        anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_top_n=(200, 100), rpn_post_nms_top_n=(100, 100),
        rpn_batch_size_per_image=64, box_batch_size_per_image=64, box_head_dim=64, mask_head_channels=16)


def _registry(**builders: Callable[..., ModelConfig]) -> dict[str, Callable[[], ModelConfig]]:
    """{name: builder(name)}: the preset's name is its key (underscores in keys become hyphens)."""
    return {key.replace("_", "-"): partial(fn, key.replace("_", "-")) for key, fn in builders.items()}


# Every preset, segmentation and detection alike: name -> a builder of a fresh config.
PRESETS: dict[str, Callable[[], ModelConfig]] = _registry(
    denseclip_rn50_ade20k=partial(_ade_rn, clip_model="RN50", text=True),
    denseclip_rn101_ade20k=partial(_ade_rn, clip_model="RN101", text=True),
    denseclip_vitb16_ade20k=partial(_ade_vit, text=True),
    fpn_clip_rn50_ade20k=partial(_ade_rn, clip_model="RN50", text=False),
    fpn_clip_rn101_ade20k=partial(_ade_rn, clip_model="RN101", text=False),
    fpn_clip_vitb16_ade20k=partial(_ade_vit, text=False),
    denseclip_tiny_rn=partial(_tiny_seg, arch=TINY_RN_ARCH, text=True, concat=3),
    denseclip_tiny_vit=partial(_tiny_seg, arch=TINY_VIT_ARCH, text=True, concat=2),
    fpn_clip_tiny_rn=partial(_tiny_seg, arch=TINY_RN_ARCH, text=False, concat=3),
    denseclip_retinanet_rn50_coco=partial(_coco, detector="retinanet", clip_model="RN50", text=True),
    denseclip_retinanet_rn101_coco=partial(_coco, detector="retinanet", clip_model="RN101", text=True),
    retinanet_clip_rn50_coco=partial(_coco, detector="retinanet", clip_model="RN50", text=False),
    retinanet_clip_rn101_coco=partial(_coco, detector="retinanet", clip_model="RN101", text=False),
    denseclip_maskrcnn_rn50_coco=partial(_coco, detector="maskrcnn", clip_model="RN50", text=True),
    denseclip_maskrcnn_rn101_coco=partial(_coco, detector="maskrcnn", clip_model="RN101", text=True),
    maskrcnn_clip_rn50_coco=partial(_coco, detector="maskrcnn", clip_model="RN50", text=False),
    maskrcnn_clip_rn101_coco=partial(_coco, detector="maskrcnn", clip_model="RN101", text=False),
    denseclip_retinanet_tiny=partial(_tiny_det, detector="retinanet", text=True),
    denseclip_maskrcnn_tiny=partial(_tiny_det, detector="maskrcnn", text=True),
    retinanet_clip_tiny=partial(_tiny_det, detector="retinanet", text=False),
    maskrcnn_clip_tiny=partial(_tiny_det, detector="maskrcnn", text=False),
)


def list_presets(kind: type[ModelConfig] = ModelConfig) -> list[str]:
    """Preset names, optionally only those of one kind (DenseCLIPConfig or DetectionConfig)."""
    return sorted(name for name, build in PRESETS.items() if isinstance(build(), kind))


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of a named preset config."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; available presets: {sorted(PRESETS)}") from None


def resolve(preset_or_config: str | ModelConfig, kind: type[C], **changes: Any) -> C:
    """A config of `kind` from a preset name or a config object, with `changes` merged in."""
    cfg = get_preset(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    if not isinstance(cfg, kind):
        use = "denseclip.build_detector" if isinstance(cfg, DetectionConfig) else "denseclip.build_model"
        raise TypeError(f"{getattr(cfg, 'name', cfg)!r} is a {type(cfg).__name__}, not a {kind.__name__}; "
                        f"build it with {use}")
    if changes.get("class_names", ()) is None:  # build_model(..., class_names=None): keep the config's
        del changes["class_names"]
    return cfg.replace(**changes) if changes else cfg
