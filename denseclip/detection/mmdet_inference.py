"""A DenseCLIP detector's forward at test time as mmdetection 2.17 runs it (`cfg.mmdet_compat=True`).

Follow one image (the authors' test configs in brackets):
    preprocess: keep-ratio resize to 1333x800, 8-bit, CLIP mean/std, pad to 32         -> x, scale_factor
    backbone(x): CLIP ResNet + score maps on C5 + FPN                                    -> P3..P7 / P2..P6
    RetinaNet: per level sigmoid scores, best anchors by their best class [nms_pre 1000], decode, clip;
               all levels / scale_factor -> multiclass_nms [score > 0.05, NMS 0.5, 100]
    Mask R-CNN: RPN per level best anchors by objectness [1000], decode, clip, NMS per level [0.7] -> 1000
               proposals; RoIAlign 7x7 -> 2 FCs -> softmax scores, class-specific boxes, clip, / scale_factor
               -> multiclass_nms [0.05, 0.5, 100]; RoIAlign 14x14 of the detections -> mask logits of
               their class -> sigmoid -> pasted at the image size
The model's own torchvision modules compute every tensor; only the order of operations is mmdetection's.
Returns torchvision's detections: boxes (N, 4) at the image size, scores, labels 1..K (, masks (N, 1, H, W)).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms, clip_boxes_to_image

from .mmdet import multiclass_nms, paste_masks, preprocess


def _retinanet(det, feats: list[torch.Tensor], images: ImageList, scale: torch.Tensor, cfg):
    """mmdet 2.17 AnchorHead._get_bboxes for one image -> (boxes, scores, labels 0..K-1)."""
    head = det.head(feats)
    anchors = det.anchor_generator(images, feats)[0]
    per_pos = det.anchor_generator.num_anchors_per_location()[0]
    counts = [f.shape[-2] * f.shape[-1] * per_pos for f in feats]
    boxes, scores = [], []
    for logits, deltas, anchor in zip(*(t.split(counts) for t in (head["cls_logits"][0],
                                                                 head["bbox_regression"][0], anchors))):
        s = logits.sigmoid()
        if 0 < cfg.nms_pre < len(s):
            top = s.max(dim=1).values.topk(cfg.nms_pre).indices
            s, deltas, anchor = s[top], deltas[top], anchor[top]
        boxes.append(clip_boxes_to_image(det.box_coder.decode_single(deltas, anchor), images.image_sizes[0]))
        scores.append(s)
    boxes, scores = torch.cat(boxes) / scale, torch.cat(scores)  # mmdet rescales before NMS
    return multiclass_nms(boxes[:, None].expand(-1, scores.shape[1], 4), scores, cfg.score_thresh,
                          cfg.nms_thresh, cfg.detections_per_img)


def _proposals(rpn, feats: list[torch.Tensor], images: ImageList, cfg) -> torch.Tensor:
    """mmdet 2.17 RPNHead._get_bboxes for one image -> proposals (P, 4) in the resized image, best first."""
    objectness, deltas = rpn.head(feats)
    anchors = rpn.anchor_generator(images, feats)[0].split([o[0].numel() for o in objectness])
    boxes, scores, ids = [], [], []
    for level, (obj, delta, anchor) in enumerate(zip(objectness, deltas, anchors)):
        s = obj[0].permute(1, 2, 0).reshape(-1).sigmoid()  # (H, W, A) order, as the anchors
        d = delta[0].permute(1, 2, 0).reshape(-1, 4)
        if 0 < cfg.rpn_pre_nms_top_n[1] < len(s):
            s, top = s.topk(cfg.rpn_pre_nms_top_n[1])
            d, anchor = d[top], anchor[top]
        boxes.append(rpn.box_coder.decode_single(d, anchor))
        scores.append(s)
        ids.append(torch.full_like(s, level, dtype=torch.int64))
    boxes = clip_boxes_to_image(torch.cat(boxes), images.image_sizes[0])
    keep = batched_nms(boxes, torch.cat(scores), torch.cat(ids), cfg.rpn_nms_thresh)  # NMS within each level
    return boxes[keep[: cfg.rpn_post_nms_top_n[1]]]


def _rcnn(roi_heads, feats: OrderedDict, proposals: torch.Tensor, size: tuple[int, int], scale: torch.Tensor,
          cfg):
    """mmdet 2.17 BBoxHead.get_bboxes for one image -> (boxes, scores, labels 0..K-1)."""
    features = roi_heads.box_head(roi_heads.box_roi_pool(feats, [proposals], [size]))
    logits, deltas = roi_heads.box_predictor(features)
    scores = logits.softmax(dim=-1)[:, 1:]  # our background is class 0 (mmdet's is the last)
    k = scores.shape[1]
    boxes = roi_heads.box_coder.decode_single(deltas[:, 4:], proposals)  # class-specific: (P, 4K)
    boxes = clip_boxes_to_image(boxes.reshape(-1, 4), size).reshape(-1, k, 4) / scale
    return multiclass_nms(boxes, scores, cfg.score_thresh, cfg.nms_thresh, cfg.detections_per_img)


def _masks(roi_heads, feats: OrderedDict, boxes: torch.Tensor, labels: torch.Tensor, size: tuple[int, int],
           scale: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """mmdet 2.17 simple_test_mask + FCNMaskHead.get_seg_masks -> (N, 1, H, W) probabilities."""
    if len(boxes) == 0:
        return boxes.new_zeros(0, 1, *image_size)
    rois = boxes * scale  # the detections back in the resized image
    logits = roi_heads.mask_predictor(roi_heads.mask_head(roi_heads.mask_roi_pool(feats, [rois], [size])))
    probs = logits[torch.arange(len(boxes), device=boxes.device), labels + 1].sigmoid()
    return paste_masks(probs, rois / scale, image_size)


def mmdet_detect_one(model, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """One (3, H, W) image in [0, 1] through a DenseCLIPDetector as mmdetection 2.17 tests it."""
    cfg, det, dtype = model.cfg, model.detector, next(model.parameters()).dtype
    x, size, scale = preprocess(image.to(torch.float64 if dtype == torch.float64 else torch.float32), cfg)
    images = ImageList(x, [size])
    feats, _ = det.backbone.forward_with_score_map(x)
    levels = list(feats.values())
    if model.is_retinanet:
        boxes, scores, labels = _retinanet(det, levels, images, scale, cfg)
        return {"boxes": boxes, "scores": scores, "labels": labels + 1}
    proposals = _proposals(det.rpn, levels, images, cfg)
    boxes, scores, labels = _rcnn(det.roi_heads, feats, proposals, size, scale, cfg)
    masks = _masks(det.roi_heads, feats, boxes, labels, size, scale, tuple(image.shape[-2:]))
    return {"boxes": boxes, "scores": scores, "labels": labels + 1, "masks": masks}


def mmdet_detect(model, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """mmdetection tests one image at a time (padding to a batch would change the attention pool's input)."""
    return [mmdet_detect_one(model, image) for image in images]
