"""The authors' detection checkpoints (mmdetection 2.x `.pth`), translated to our torchvision detectors.

    cfg, state = load_official_detector("retinanet_denseclip_r50_fpn_1x_coco.pth")

Their four released files are DenseCLIP RetinaNet and Mask R-CNN on CLIP RN50 / RN101 (COCO, 80 classes).
The architecture is read off the tensors (detector, CLIP tower, text side, FPN / head widths); class names
come from meta["CLASSES"] (COCO's when absent and there are 80 classes). The config asks for mmdetection's
test-time semantics (`mmdet_compat=True`, see `denseclip.detection.mmdet`), so the loaded model gives
the detections their model gives. Their key names become ours with one table per detector; mmdetection
keeps the background logit last and has no background row in the class-specific box regression or mask
logits, torchvision puts background first: `TENSOR_FIXES` moves and adds those rows, nothing else changes.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from ..config import DetectionConfig
from ..vocab import COCO_CLASSES
from .common import (
    BASELINE_TEXT_CFG,
    class_names_for,
    read_official_checkpoint,
    resnet_tower,
    text_side,
    translate_keys,
)

_SHARED = (
    ("backbone.", "detector.backbone.encoder.visual."),
    ("text_encoder.", "detector.backbone.prompting.text_encoder."),
    ("context_decoder.", "detector.backbone.prompting.context_decoder."),
    ("contexts", "detector.backbone.prompting.contexts"),
    ("gamma", "detector.backbone.prompting.gamma"),
    ("neck.lateral_convs.{}.conv.", "detector.backbone.fpn.inner_blocks.{}.0."),
)
# Their mmdetection 2.x names -> ours ("{}" is a number), first match wins.
DETECTION_KEYS = {
    "retinanet": _SHARED + (
        ("neck.fpn_convs.3.conv.", "detector.backbone.fpn.extra_blocks.p6."),  # add_extra_convs="on_input"
        ("neck.fpn_convs.4.conv.", "detector.backbone.fpn.extra_blocks.p7."),
        ("neck.fpn_convs.{}.conv.", "detector.backbone.fpn.layer_blocks.{}.0."),
        ("bbox_head.cls_convs.{}.conv.", "detector.head.classification_head.conv.{}.0."),
        ("bbox_head.reg_convs.{}.conv.", "detector.head.regression_head.conv.{}.0."),
        ("bbox_head.retina_cls.", "detector.head.classification_head.cls_logits."),
        ("bbox_head.retina_reg.", "detector.head.regression_head.bbox_reg."),
    ),
    "maskrcnn": _SHARED + (
        ("neck.fpn_convs.{}.conv.", "detector.backbone.fpn.layer_blocks.{}.0."),
        ("rpn_head.rpn_conv.", "detector.rpn.head.conv.0.0."),
        ("rpn_head.rpn_cls.", "detector.rpn.head.cls_logits."),
        ("rpn_head.rpn_reg.", "detector.rpn.head.bbox_pred."),
        ("roi_head.bbox_head.shared_fcs.0.", "detector.roi_heads.box_head.fc6."),
        ("roi_head.bbox_head.shared_fcs.1.", "detector.roi_heads.box_head.fc7."),
        ("roi_head.bbox_head.fc_cls.", "detector.roi_heads.box_predictor.cls_score."),
        ("roi_head.bbox_head.fc_reg.", "detector.roi_heads.box_predictor.bbox_pred."),
        ("roi_head.mask_head.convs.{}.conv.", "detector.roi_heads.mask_head.{}.0."),
        ("roi_head.mask_head.upsample.", "detector.roi_heads.mask_predictor.conv5_mask."),
        ("roi_head.mask_head.conv_logits.", "detector.roi_heads.mask_predictor.mask_fcn_logits."),
    ),
}
UNUSED_WITHOUT_TEXT = ("backbone.attnpool.",)  # a CLIP baseline has no use for the attention pool


def _background_first(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[-1:], t[:-1]])


def _zero_background(rows: int, t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t.new_zeros(rows, *t.shape[1:]), t])


_BOX, _MASK = "detector.roi_heads.box_predictor.", "detector.roi_heads.mask_predictor.mask_fcn_logits."
TENSOR_FIXES = {  # our key -> their tensor in torchvision's class layout
    _BOX + "cls_score.weight": _background_first, _BOX + "cls_score.bias": _background_first,
    _BOX + "bbox_pred.weight": partial(_zero_background, 4),
    _BOX + "bbox_pred.bias": partial(_zero_background, 4),
    _MASK + "weight": partial(_zero_background, 1),
    _MASK + "bias": partial(_zero_background, 1),
}


def detector_kind(state: dict[str, torch.Tensor]) -> str:
    """"retinanet" or "maskrcnn", or an error that says what the file holds instead."""
    if "bbox_head.retina_cls.weight" in state:
        return "retinanet"
    if "roi_head.mask_head.conv_logits.weight" in state:
        return "maskrcnn"
    if "decode_head.conv_seg.weight" in state:
        raise ValueError("this is a segmentation checkpoint: load it with denseclip.load_checkpoint")
    if "roi_head.bbox_head.fc_cls.weight" in state:
        raise ValueError("a two-stage detector without a mask head (Faster R-CNN) is not one of the authors' "
                         "layouts; denseclip loads their RetinaNet and Mask R-CNN checkpoints")
    raise ValueError("not a DenseCLIP/mmdetection 2.x detection checkpoint: expected bbox_head.retina_cls.* "
                     "(RetinaNet) or roi_head.mask_head.* (Mask R-CNN)")


def _head_fields(state: dict[str, torch.Tensor], kind: str) -> tuple[int, dict]:
    """(number of classes, DetectionConfig fields) of the detection heads. A layout we do not build (other
    anchors, head depths) shows as misshapen, missing or unexpected tensors when the state is loaded."""
    c = state["neck.fpn_convs.0.conv.weight"].shape[0]
    if kind == "retinanet":
        return state["bbox_head.retina_cls.weight"].shape[0] // 9, {"fpn_channels": c}  # 3 scales x 3 ratios
    fields = {"fpn_channels": c, "box_head_dim": state["roi_head.bbox_head.shared_fcs.0.weight"].shape[0],
              "mask_head_channels": state["roi_head.mask_head.convs.0.conv.weight"].shape[0]}
    return state["roi_head.bbox_head.fc_cls.weight"].shape[0] - 1, fields


def config_from_official_detector(state: dict[str, torch.Tensor], meta: dict | None = None,
                                  base: DetectionConfig | None = None) -> DetectionConfig:
    """A DetectionConfig that fits the tensors of an authors' detection checkpoint, with mmdetection's
    test-time semantics. `base` supplies what tensors cannot tell (thresholds, image size, tau)."""
    kind = detector_kind(state)
    k, head = _head_fields(state, kind)
    text = text_side(state)
    vision_cfg, pooled, name = resnet_tower(state, base.input_resolution if base is not None else 1344)
    text_cfg, embed_dim, prompt = text if text is not None else (BASELINE_TEXT_CFG, pooled or 1024, None)
    start = base if base is not None else DetectionConfig()
    return start.replace(
        name=f"official-{'denseclip' if prompt else 'clip'}-{kind}-{name.lower()}", detector=kind,
        clip_model=name, clip_pretrained=None, quick_gelu=True, input_resolution=vision_cfg["image_size"],
        clip_arch={"embed_dim": int(embed_dim), "vision_cfg": vision_cfg, "text_cfg": dict(text_cfg)},
        class_names=class_names_for(k, meta or {}, base, COCO_CLASSES), prompt=prompt, pos_embed="crop",
        anchor_sizes=(32, 64, 128, 256, 512), mmdet_compat=True, **head)


def translate_detector(state: dict[str, torch.Tensor], kind: str,
                       use_text: bool = True) -> dict[str, torch.Tensor]:
    """The authors' detection state dict under our key names and torchvision's class layout."""
    return translate_keys(state, DETECTION_KEYS[kind], () if use_text else UNUSED_WITHOUT_TEXT, kind,
                          TENSOR_FIXES)


def load_official_detector(path: str | Path, base: DetectionConfig | None = None,
                           class_names: tuple[str, ...] | None = None) -> tuple[DetectionConfig, dict]:
    """(config, state dict in our names) of an authors' detection checkpoint; `class_names` replace (or
    supply) meta["CLASSES"]."""
    state, meta = read_official_checkpoint(path, class_names)
    try:
        cfg = config_from_official_detector(state, meta, base)
    except KeyError as e:
        raise ValueError(f"{path} lacks the tensor {e.args[0]!r} that every {detector_kind(state)} "
                         "checkpoint of the authors has; is the file complete?") from None
    return cfg, translate_detector(state, cfg.detector, cfg.use_text)
