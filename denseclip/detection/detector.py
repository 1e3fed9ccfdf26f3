"""DenseCLIP detectors: torchvision RetinaNet / Mask R-CNN on a DenseCLIP backbone, plus the auxiliary loss.

    model = build_detector("denseclip-retinanet-rn50-coco")      # preset name or DetectionConfig
    losses = model(images, targets)    # train: torchvision's losses, "loss_aux" (DenseCLIP), "loss" (sum)
    detections = model(images)         # eval: torchvision's list of {"boxes", "scores", "labels"(, "masks")}

Labels follow torchvision: 1..K index `class_names` (label - 1), 0 is background. Images are float
(3, H, W) in [0, 1]; torchvision's transform resizes them (min_size/max_size) and normalises them
with CLIP's mean/std, and also resizes the targets.

Training composes torchvision's own pieces (transform -> backbone -> head / rpn + roi_heads), as
GeneralizedRCNN.forward and RetinaNet.forward do, because the score maps come out of the backbone and
the auxiliary target needs the boxes in the transformed (resized, padded) image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from ..checkpoints import HubMixin, build, load_model
from ..config import CLIP_MEAN, CLIP_STD, DetectionConfig, resolve
from ..encoders import CLIPResNetEncoder
from ..param_groups import backbone_param_groups
from ..prompting import prompting_for
from .backbone import DenseCLIPBackbone, full_precision
from .mmdet import OCTAVE, RATIOS, use_mmdet_parts
from .mmdet_inference import mmdet_detect

AUX_STRIDE = 4  # the authors build the box target and upsample the score maps at stride 4 (C2)


def aux_target(boxes: Sequence[torch.Tensor], classes: Sequence[torch.Tensor], num_classes: int,
               size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' `build_seg_target`: per-class binary maps filled inside each box, at stride 4.

    boxes: per image (N, 4) xyxy in the (padded) image of `size` (H, W); classes: per image (N,) in 0..K-1.
    A box covers cells [floor(y1/4), floor(y2/4)) x [floor(x1/4), floor(x2/4)) (corners clamped to the grid).
    Returns target (B, K, H/4, W/4) and mask (B, 1, H/4, W/4): 1 where any box covers the cell.
    """
    h, w = size[0] // AUX_STRIDE, size[1] // AUX_STRIDE
    device = boxes[0].device if len(boxes) else torch.device("cpu")
    target = torch.zeros(len(boxes), num_classes, h, w, device=device)
    mask = torch.zeros(len(boxes), 1, h, w, device=device)
    for i, (b, c) in enumerate(zip(boxes, classes)):
        cells = torch.div(b.detach(), AUX_STRIDE, rounding_mode="floor").long()
        cells[:, 0::2] = cells[:, 0::2].clamp(0, w - 1)
        cells[:, 1::2] = cells[:, 1::2].clamp(0, h - 1)
        for (x1, y1, x2, y2), k in zip(cells.tolist(), c.tolist()):
            target[i, k, y1:y2, x1:x2] = 1
            mask[i, :, y1:y2, x1:x2] = 1
    return target, mask


def aux_loss(score_map: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE of the score maps (already / tau) upsampled to the target grid, over the pixels inside any box,
    averaged over those pixels and the K classes (the authors' `compute_seg_loss`; 0 without boxes)."""
    s = F.interpolate(score_map.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    weight = mask.expand_as(target)
    loss = F.binary_cross_entropy_with_logits(s, target, weight=weight, reduction="sum")
    return loss / weight.sum().clamp(min=1)


def _cast(x, fn):
    """`fn` applied to every tensor in a (nested) list, tuple or dict."""
    if torch.is_tensor(x):
        return fn(x)
    if isinstance(x, dict):
        return {k: _cast(v, fn) for k, v in x.items()}
    return type(x)(_cast(v, fn) for v in x) if isinstance(x, (list, tuple)) else x


def _to_weights_dtype(module: nn.Module, args: tuple) -> tuple:
    dtype = next(module.parameters()).dtype
    return _cast(args, lambda t: t.to(dtype) if t.is_floating_point() else t)


def _to_full_precision(module: nn.Module, args: tuple, output):
    return _cast(output, full_precision)


def heads_in_weights_dtype(det: RetinaNet | MaskRCNN) -> None:
    """torchvision's heads compute in their weights' dtype (bfloat16 after `model.to(torch.bfloat16)`),
    and what follows them (anchors, box decoding, scores, RoI pooling, NMS) in full precision: forward
    hooks cast the heads' inputs to the weights' dtype and their outputs back to float32."""
    if isinstance(det, RetinaNet):
        first = last = [det.head]
    else:
        roi = det.roi_heads
        first, last = [det.rpn.head, roi.box_head, roi.mask_head], [det.rpn.head, roi.box_predictor,
                                                                    roi.mask_predictor]
    for m in first:
        m.register_forward_pre_hook(_to_weights_dtype)
    for m in last:
        m.register_forward_hook(_to_full_precision)


class DenseCLIPDetector(nn.Module, HubMixin, tags=["object-detection", "denseclip", "clip"]):
    """A torchvision RetinaNet or MaskRCNN (`detector`) whose backbone is a `DenseCLIPBackbone`, and the
    config that built it (`cfg`). Build it with `build_detector`.

    forward(images, targets): train -> dict of losses (torchvision's names, "loss_aux", "loss" = their sum);
    eval -> the torchvision detections at each input image's size.
    """

    def __init__(self, detector: RetinaNet | MaskRCNN, cfg: DetectionConfig):
        super().__init__()
        if not isinstance(detector.backbone, DenseCLIPBackbone):
            raise TypeError(f"the detector's backbone must be a DenseCLIPBackbone, got "
                            f"{type(detector.backbone).__name__}")
        self.detector, self.cfg = detector, cfg
        heads_in_weights_dtype(detector)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.cfg.class_names)

    @property
    def backbone(self) -> DenseCLIPBackbone:
        return self.detector.backbone

    @property
    def is_retinanet(self) -> bool:
        return isinstance(self.detector, RetinaNet)

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        images = check_images(images)
        if self.is_retinanet and targets is not None:  # RetinaNet has K logits: classes 0..K-1
            targets = [{**t, "labels": t["labels"] - 1} for t in targets]
        if not self.training and self.cfg.mmdet_compat:  # the authors' checkpoints: mmdetection's test path
            return mmdet_detect(self, images)
        if not self.training:
            detections = self.detector(images)
            if self.is_retinanet:
                detections = [{**d, "labels": d["labels"] + 1} for d in detections]
            return detections
        if targets is None:
            raise ValueError("training needs targets: a list of {'boxes': (N, 4) xyxy, 'labels': (N,) in 1..K"
                             "(, 'masks': (N, H, W))} per image; call model.eval() for detections")
        check_targets(targets, self.cfg.num_classes, self.is_retinanet, self.cfg.with_masks)
        det = self.detector
        image_list, targets = det.transform(images, targets)  # resized + padded images, resized targets
        features, score_map = det.backbone.forward_with_score_map(image_list.tensors)
        if self.is_retinanet:
            feats = list(features.values())
            anchors = det.anchor_generator(image_list, feats)
            losses = det.compute_loss(targets, det.head(feats), anchors)
        else:
            proposals, losses = det.rpn(image_list, features, targets)
            _, roi_losses = det.roi_heads(features, proposals, image_list.image_sizes, targets)
            losses = {**losses, **roi_losses}
        if score_map is not None and self.cfg.aux_loss_weight > 0:
            shift = 0 if self.is_retinanet else 1
            target, mask = aux_target([t["boxes"] for t in targets], [t["labels"] - shift for t in targets],
                                      self.cfg.num_classes, tuple(image_list.tensors.shape[-2:]))
            losses["loss_aux"] = self.cfg.aux_loss_weight * aux_loss(score_map, target, mask)
        losses["loss"] = sum(losses.values())
        return losses

    param_groups = backbone_param_groups

    def extra_repr(self) -> str:
        return f"name={self.cfg.name!r}, detector={self.cfg.detector}, classes={self.cfg.num_classes}, " \
               f"use_text={self.cfg.use_text}"

    @classmethod
    def load_file(cls, path: Path) -> DenseCLIPDetector:
        return load_detector(path)

    def card_text(self, metrics: dict | None = None, repo_id: str = "user/repo") -> str:
        cfg = self.cfg
        lines = [f"# {repo_id.split('/')[-1]}", "",
                 f"DenseCLIP {cfg.detector} `{cfg.name}` (CLIP `{cfg.clip_model}`, {cfg.num_classes} "
                 f"classes, {'language-guided' if cfg.use_text else 'CLIP baseline'}), a torchvision "
                 "detector (DenseCLIP, Rao et al., CVPR 2022).", "", "```python", "import denseclip",
                 f'model = denseclip.load_detector("{repo_id}")',
                 'r = denseclip.detect(model, "photo.jpg")  # r.boxes, r.names, r.scores', "```", ""]
        if metrics:
            kinds = [k for k in ("bbox", "segm") if f"{k}_AP" in metrics]
            cols = [f"{'box' if k == 'bbox' else 'mask'} {m}" for k in kinds for m in ("AP", "AP50", "AP75")]
            values = [metrics.get(f"{k}_{m}", float("nan")) for k in kinds for m in ("AP", "AP50", "AP75")]
            lines += ["## Validation (COCO)", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols),
                      "| " + " | ".join("n/a" if v != v else f"{100 * v:.1f}" for v in values) + " |", ""]
        return "\n".join([*lines, "Classes: " + ", ".join(cfg.class_names), ""])


def _transform_args(cfg: DetectionConfig) -> dict:
    return dict(min_size=cfg.min_size, max_size=cfg.max_size, image_mean=list(CLIP_MEAN),
                image_std=list(CLIP_STD))


def _retinanet(backbone: DenseCLIPBackbone, cfg: DetectionConfig) -> RetinaNet:
    """torchvision's RetinaNet with K sigmoid classes (no background) and its rounded anchors."""
    sizes = tuple((s, int(s * OCTAVE[1]), int(s * OCTAVE[2])) for s in cfg.anchor_sizes)
    return RetinaNet(backbone, num_classes=cfg.num_classes, anchor_generator=AnchorGenerator(sizes, RATIOS),
                     score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
                     detections_per_img=cfg.detections_per_img, topk_candidates=cfg.nms_pre,
                     **_transform_args(cfg))


def _maskrcnn(backbone: DenseCLIPBackbone, cfg: DetectionConfig) -> MaskRCNN:
    """torchvision's Mask R-CNN (K + 1 classes, background first), RoIs pooled from P2..P5."""
    k, c, names = cfg.num_classes, cfg.fpn_channels, list(backbone.level_names[:4])
    anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), RATIOS)
    return MaskRCNN(
        backbone, num_classes=None, rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n[0], rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n[1],
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n[0], rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n[1],
        rpn_nms_thresh=cfg.rpn_nms_thresh, rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(names, 7, 2), box_head=TwoMLPHead(c * 7 * 7, cfg.box_head_dim),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, k + 1), box_score_thresh=cfg.score_thresh,
        box_nms_thresh=cfg.nms_thresh, box_detections_per_img=cfg.detections_per_img,
        box_batch_size_per_image=cfg.box_batch_size_per_image, mask_roi_pool=MultiScaleRoIAlign(names, 14, 2),
        mask_head=MaskRCNNHeads(c, (cfg.mask_head_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_head_channels, cfg.mask_head_channels, k + 1),
        **_transform_args(cfg))


def check_images(images) -> list[torch.Tensor]:
    """A list of (3, H, W) float images in [0, 1] (a (B, 3, H, W) tensor is split into one)."""
    images = list(images) if torch.is_tensor(images) and images.ndim == 4 else images
    if torch.is_tensor(images) or not isinstance(images, (list, tuple)) or not images:
        raise ValueError("images must be a non-empty list of (3, H, W) float tensors in [0, 1] "
                         "(use denseclip.detection.detect() for PIL images, files or numpy arrays)")
    for i, im in enumerate(images):
        if not torch.is_tensor(im) or im.shape[:1] != (3,) or im.ndim != 3 or not im.is_floating_point():
            got = f"{tuple(im.shape)} {im.dtype}" if torch.is_tensor(im) else type(im).__name__
            raise ValueError(f"image #{i} must be a (3, H, W) tensor of float values in [0, 1] (uint8 / 255),"
                             f" got {got}")
    return list(images)


def check_targets(targets, num_classes: int, shifted: bool, with_masks: bool) -> None:
    lo, hi = (0, num_classes - 1) if shifted else (1, num_classes)
    for i, t in enumerate(targets):
        boxes, labels = t.get("boxes"), t.get("labels")
        if not torch.is_tensor(boxes) or boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target #{i}: 'boxes' must be a (N, 4) xyxy tensor")
        if not torch.is_tensor(labels) or labels.shape != boxes.shape[:1]:
            raise ValueError(f"target #{i}: 'labels' must be a (N,) tensor matching the "
                             f"{boxes.shape[0]} boxes")
        if labels.numel() and (labels.min() < lo or labels.max() > hi):
            raise ValueError(f"target #{i}: labels must be in 1..{num_classes} (0 is background); "
                             f"got {sorted(set((labels + (1 if shifted else 0)).tolist()))[:10]}")
        bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bad.any():
            raise ValueError(f"target #{i}: box {boxes[bad][0].tolist()} has no width or height; "
                             "drop degenerate boxes in the dataset")
        if with_masks and "masks" not in t:
            raise ValueError(f"target #{i}: Mask R-CNN needs 'masks' (N, H, W) in every target")


def build_detector(preset_or_config: str | DetectionConfig = "denseclip-retinanet-rn50-coco",
                   pretrained: bool | str | None = True, class_names: Sequence[str] | None = None,
                   **changes) -> DenseCLIPDetector:
    """Build a DenseCLIP detector (train mode, CPU) from a preset name or a DetectionConfig.

    pretrained=True loads the config's CLIP weights (`clip_pretrained`); False/None random weights; a string
    is an open_clip tag or a local CLIP weights file. `class_names` and `changes` replace config fields.
    """
    return build(resolve(preset_or_config, DetectionConfig, class_names=class_names, **changes), assemble,
                 pretrained)


def assemble(cfg: DetectionConfig, clip_model: nn.Module) -> DenseCLIPDetector:
    """The parts a detection config describes, around a given open_clip model: the DenseCLIP backbone, in
    torchvision's RetinaNet or Mask R-CNN (with mmdetection's parts when cfg.mmdet_compat)."""
    if not hasattr(clip_model.visual, "attnpool"):
        raise ValueError(f"detection needs a CLIP ResNet image tower (RN50, RN101, ...); {cfg.clip_model!r} "
                         f"has {type(clip_model.visual).__name__}")
    encoder = CLIPResNetEncoder(clip_model.visual, cfg.input_resolution, pos_embed=cfg.pos_embed,
                                embeddings=cfg.use_text)
    backbone = DenseCLIPBackbone(encoder, prompting_for(clip_model, cfg, encoder.embed_dim), cfg)
    detector = (_retinanet if cfg.detector == "retinanet" else _maskrcnn)(backbone, cfg)
    use_mmdet_parts(detector, cfg)
    return DenseCLIPDetector(detector, cfg)


def load_detector(path_or_repo: str | Path, config: str | DetectionConfig | None = None,
                  class_names: Sequence[str] | None = None,
                  device: str | torch.device = "cpu") -> DenseCLIPDetector:
    """A detector in eval mode from:

    - our `.safetensors` file, a folder holding model.safetensors (a training checkpoint, `final/`), or a
      Hub repo id; `config` overrides the stored config (a preset name or a DetectionConfig);
    - the authors' released mmdetection 2.x checkpoints (`retinanet_denseclip_r50_fpn_1x_coco.pth`, ...):
      read with weights_only=True, the architecture read off the tensors, class names from
      meta["CLASSES"] (COCO's when absent), mmdetection's test-time semantics (cfg.mmdet_compat), so the
      detections are theirs; `config` then only supplies what tensors cannot tell (thresholds, image size).
    `class_names` renames the classes (same count).
    """
    return load_model(path_or_repo, DetectionConfig, assemble, config, class_names, device)
