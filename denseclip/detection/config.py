"""Typed config of a DenseCLIP detector (torchvision RetinaNet / Mask R-CNN), presets, JSON/YAML.

Defaults are the authors' RetinaNet RN50 COCO setting (detection/configs/retinanet_denseclip_r50_fpn_1x_coco.py):
CLIP RN50 at input_resolution 1344, 8 learnable contexts + 5 class tokens, a 3-layer context decoder, score
maps / tau concatenated onto C5, FPN 256, images resized to 1333x800 with CLIP's mean/std. The training
schedule (AdamW, 1x) lives in the training YAMLs (train/configs/det_*.yaml), not here.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TINY_RN_ARCH
from ..vocab import COCO_CLASSES

DETECTORS = ("retinanet", "maskrcnn")


@dataclass
class DetectionConfig:
    """Everything that defines a DenseCLIP detector (or its CLIP baseline when `use_text` is False)."""

    name: str = "custom"
    detector: str = "retinanet"  # "retinanet" (P3-P7) | "maskrcnn" (P2-P6, box + mask heads)
    # --- CLIP towers (open_clip) ---
    clip_model: str = "RN50"  # open_clip name; detection supports the CLIP ResNets (RN50, RN101, ...)
    clip_pretrained: str | None = "openai"  # open_clip tag, a local file, or None for random weights
    clip_arch: dict | None = None  # explicit open_clip config (tiny test models)
    quick_gelu: bool = True
    input_resolution: int = 1344  # attention-pool positional embedding resized to 1344/32 = 42x42 once, at build
    pos_embed: str = "crop"  # per image: "crop" the 42x42 grid to the feature map (the authors), or "resize" it
    # --- classes and language guidance ---
    class_names: tuple[str, ...] = COCO_CLASSES
    use_text: bool = True  # False: the CLIP baseline (no text, no score maps, no auxiliary loss)
    num_contexts: int = 8
    class_token_budget: int = 5
    context_init: str | None = None  # init the contexts from a phrase ("a photo of a"), else trunc_normal
    decoder_width: int = 256
    decoder_heads: int = 4
    decoder_layers: int = 3
    decoder_dropout: float = 0.1
    gamma_init: float = 1e-4
    freeze_text_encoder: bool = True
    tau: float = 0.07  # score maps are divided by tau before concatenation and in the auxiliary loss
    aux_loss_weight: float = 1.0  # the authors add their box-target BCE ("loss_aux_seg") unweighted
    # --- neck, image transform, heads ---
    fpn_channels: int = 256
    min_size: int = 800  # torchvision GeneralizedRCNNTransform: short side -> 800 ...
    max_size: int = 1333  # ... unless the long side would exceed 1333 (mmdet img_scale=(1333, 800))
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # base anchor size per pyramid level
    score_thresh: float = 0.05  # test: detections below are dropped before NMS (mmdet score_thr)
    nms_thresh: float = 0.5
    detections_per_img: int = 100  # COCO evaluates at most 100 per image (torchvision's RetinaNet default: 300)
    # --- Mask R-CNN only (mmdet mask_rcnn_r50_fpn values) ---
    rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000)  # (train, test), per level
    rpn_post_nms_top_n: tuple[int, int] = (1000, 1000)  # (train, test), per image
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_head_dim: int = 1024  # TwoMLPHead representation size
    mask_head_channels: int = 256  # 4 convs of this width in the mask head

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.pos_embed not in ("crop", "resize"):
            raise ValueError(f"pos_embed must be 'crop' or 'resize', got {self.pos_embed!r}")
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per pyramid level (5), got {self.anchor_sizes}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def with_masks(self) -> bool:
        return self.detector == "maskrcnn"

    def replace(self, **changes: Any) -> DetectionConfig:
        _check_keys(changes, type(self))
        return dataclasses.replace(self, **_tuples(changes))

    # --- serialisation ---
    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists

    @classmethod
    def from_dict(cls, d: dict) -> DetectionConfig:
        _check_keys(d, cls)
        return cls(**_tuples(dict(d)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> DetectionConfig:
        return cls.from_dict(json.loads(text))

    def save_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True), "utf-8")

    @classmethod
    def load_yaml(cls, path: str | Path) -> DetectionConfig:
        """A YAML of fields; `preset: name` starts from a preset and the other keys override it."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        return config_from_dict(yaml.safe_load(path.read_text("utf-8")) or {})


def config_from_dict(d: dict) -> DetectionConfig:
    """{"preset": name, **overrides} or a full field dict -> DetectionConfig."""
    d = dict(d)
    if "preset" in d:
        return get_detection_preset(d.pop("preset")).replace(**d)
    return DetectionConfig.from_dict(d)


_TUPLE_FIELDS = {f.name for f in dataclasses.fields(DetectionConfig)
                 if str(f.type).startswith("tuple") or typing.get_origin(f.type) is tuple}


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if k in _TUPLE_FIELDS and isinstance(v, list) else v for k, v in d.items()}


def _check_keys(d: dict, cls: type) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - valid)
    if unknown:
        raise KeyError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(valid)}")


# ---------------------------------------------------------------------------------------------
# Presets: the paper's COCO detectors, their CLIP baselines, and tiny random models for tests.
# ---------------------------------------------------------------------------------------------

TINY_DET_CLASSES = ("red box", "green ellipse", "blue box")  # the synthetic COCO-format data's categories


def _coco(name: str, detector: str, clip_model: str, use_text: bool) -> DetectionConfig:
    return DetectionConfig(name=name, detector=detector, clip_model=clip_model, use_text=use_text)


def _tiny(name: str, detector: str, use_text: bool) -> DetectionConfig:
    return DetectionConfig(
        name=name, detector=detector, clip_model=name, clip_pretrained=None,
        clip_arch=json.loads(json.dumps(TINY_RN_ARCH)), input_resolution=128, class_names=TINY_DET_CLASSES,
        use_text=use_text, num_contexts=4, class_token_budget=5, decoder_width=32, decoder_heads=2,
        decoder_layers=1, fpn_channels=32, min_size=96, max_size=128, anchor_sizes=(8, 16, 32, 64, 128),
        rpn_pre_nms_top_n=(200, 100), rpn_post_nms_top_n=(100, 100), rpn_batch_size_per_image=64,
        box_batch_size_per_image=64, box_head_dim=64, mask_head_channels=16)


DETECTION_PRESETS = {
    "denseclip-retinanet-rn50-coco": lambda: _coco("denseclip-retinanet-rn50-coco", "retinanet", "RN50", True),
    "denseclip-retinanet-rn101-coco": lambda: _coco("denseclip-retinanet-rn101-coco", "retinanet", "RN101", True),
    "retinanet-clip-rn50-coco": lambda: _coco("retinanet-clip-rn50-coco", "retinanet", "RN50", False),
    "retinanet-clip-rn101-coco": lambda: _coco("retinanet-clip-rn101-coco", "retinanet", "RN101", False),
    "denseclip-maskrcnn-rn50-coco": lambda: _coco("denseclip-maskrcnn-rn50-coco", "maskrcnn", "RN50", True),
    "denseclip-maskrcnn-rn101-coco": lambda: _coco("denseclip-maskrcnn-rn101-coco", "maskrcnn", "RN101", True),
    "maskrcnn-clip-rn50-coco": lambda: _coco("maskrcnn-clip-rn50-coco", "maskrcnn", "RN50", False),
    "maskrcnn-clip-rn101-coco": lambda: _coco("maskrcnn-clip-rn101-coco", "maskrcnn", "RN101", False),
    "denseclip-retinanet-tiny": lambda: _tiny("denseclip-retinanet-tiny", "retinanet", True),
    "denseclip-maskrcnn-tiny": lambda: _tiny("denseclip-maskrcnn-tiny", "maskrcnn", True),
    "retinanet-clip-tiny": lambda: _tiny("retinanet-clip-tiny", "retinanet", False),
    "maskrcnn-clip-tiny": lambda: _tiny("maskrcnn-clip-tiny", "maskrcnn", False),
}


def list_detection_presets() -> list[str]:
    return sorted(DETECTION_PRESETS)


def get_detection_preset(name: str) -> DetectionConfig:
    """A fresh copy of a named detection preset."""
    try:
        return DETECTION_PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown detection preset {name!r}; available: {list_detection_presets()}") from None
