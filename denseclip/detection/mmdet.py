"""mmdetection 2.x's test-time building blocks, where they differ from torchvision's (`mmdet_compat=True`).

The authors trained and evaluated their detectors with mmdetection 2.17 / mmcv 1.3.17. A loaded checkpoint
gives their detections only if these details are theirs too:

- anchors: base anchors centred on (0, 0) *without rounding*, placed on each level's configured stride
  (torchvision rounds the corners and derives strides from the padded image, which is off for P6/P7);
- box decoding (`delta2bbox`): centre (x1 + x2) / 2, log-size deltas clamped to +-log(1000/16) both ways;
- RoI features (`SingleRoIExtractor` + mmcv `RoIAlign`): level floor(log2(sqrt(area) / 56 + 1e-6)),
  aligned=True (half-pixel offset), sampling_ratio=0 (ceil(roi size / output size) samples per bin);
- the test image: mmcv's keep-ratio size (rounded, not floored), bilinear resize written back as 8-bit
  pixels (as cv2 does), CLIP mean/std, zero padding to a multiple of 32, one image at a time;
- P7 = conv(P6) without torchvision's ReLU between them (mmdet's relu_before_extra_convs=False);
- `multiclass_nms`: every (box, class) pair above the score threshold, class-wise NMS, the best N;
- masks (`_do_paste_mask`): each 28x28 probability map bilinearly sampled (grid_sample, align_corners=False)
  at the pixel centres of its box, thresholded with >= 0.5.

`use_mmdet_parts` puts the first four into a torchvision detector; the test-time flow that uses the rest
(RetinaNet, RPN, RoI heads) is `denseclip.detection.mmdet_inference`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_area, box_convert, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ..config import DetectionConfig
from ..data.transforms import keep_ratio_size, normalize_image

SIZE_DIVISOR = 32  # mmdet Pad(size_divisor=32)
FINEST_SCALE = 56  # mmdet SingleRoIExtractor: RoIs under 112 px (sqrt of the area) pool from the finest level
RATIOS = ((0.5, 1.0, 2.0),) * 5  # anchor height / width at every level (mmdet and torchvision alike)
OCTAVE = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))  # RetinaNet: 3 scales per octave (mmdet octave_base_scale=4)


def use_mmdet_parts(det: nn.Module, cfg: DetectionConfig) -> None:
    """With cfg.mmdet_compat, swap a torchvision RetinaNet's / Mask R-CNN's anchors, box coders, RoI pooling
    and P7 for mmdetection's (in place, before weights are loaded); nothing otherwise."""
    if not cfg.mmdet_compat:
        return
    strides = det.backbone.strides
    if isinstance(det, RetinaNet):
        sizes = tuple(tuple(s * o for o in OCTAVE) for s in cfg.anchor_sizes)
        det.anchor_generator = MMDetAnchorGenerator(sizes, RATIOS, strides)
        det.box_coder = MMDetBoxCoder(det.box_coder.weights)
        p6 = det.backbone.fpn.extra_blocks.p6
        det.backbone.fpn.extra_blocks = LastLevelP6P7NoReLU(p6.in_channels, p6.out_channels)
        return
    rpn, roi = det.rpn, det.roi_heads
    rpn.anchor_generator = MMDetAnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), RATIOS, strides)
    rpn.box_coder, roi.box_coder = MMDetBoxCoder(rpn.box_coder.weights), MMDetBoxCoder(roi.box_coder.weights)
    names = roi.box_roi_pool.featmap_names
    roi.box_roi_pool, roi.mask_roi_pool = (LevelRoIAlign(names, n, strides[:4]) for n in (7, 14))


class LastLevelP6P7NoReLU(LastLevelP6P7):
    """P6 = conv(C5'), P7 = conv(P6): mmdetection's extra convs "on_input" without a ReLU before P7
    (torchvision's LastLevelP6P7 has one). Same parameters (p6, p7), so the same state dict."""

    def forward(self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]):
        p6 = self.p6(c[-1])
        return [*p, p6, self.p7(p6)], [*names, "p6", "p7"]


class MMDetAnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator with mmdetection's anchors: no rounding, configured strides.

    sizes / aspect_ratios as torchvision's (per level; ratio = height / width, order ratio-major as both
    libraries); strides: one per level (8..128 for RetinaNet, 4..64 for the RPN).
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int]):
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(a) for a in aspect_ratios))
        if len(strides) != len(self.sizes):
            raise ValueError(f"{len(self.sizes)} anchor levels but {len(strides)} strides")
        self.strides = tuple(int(s) for s in strides)

    def generate_anchors(self, scales, aspect_ratios, dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device("cpu")) -> torch.Tensor:
        """(A, 4) anchors centred on (0, 0): torchvision's formula without its final `.round()`."""
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) * 0.5

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        # computed in the features' dtype (float64 anchors stay exact), not cast from float32
        self.cell_anchors = [self.generate_anchors(s, a, dtype, device)
                             for s, a in zip(self.sizes, self.aspect_ratios)]

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        self.set_cell_anchors(dtype, device)
        strides = [[torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides]
        per_level = self.grid_anchors([list(f.shape[-2:]) for f in feature_maps], strides)
        return [torch.cat(per_level) for _ in image_list.image_sizes]


class MMDetBoxCoder(BoxCoder):
    """torchvision's BoxCoder (weights = 1 / mmdet's target_stds) that decodes as mmdet's `delta2bbox`."""

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """rel_codes (N, 4k) deltas, boxes (N, 4) xyxy -> (N, 4k) boxes (not clipped)."""
        boxes = boxes.to(rel_codes.dtype)
        stds = [1.0 / w for w in self.weights]  # 0.1 / 0.2 as mmdet's config writes them
        dx, dy = rel_codes[:, 0::4] * stds[0], rel_codes[:, 1::4] * stds[1]
        clip = self.bbox_xform_clip
        dw = (rel_codes[:, 2::4] * stds[2]).clamp(-clip, clip)
        dh = (rel_codes[:, 3::4] * stds[3]).clamp(-clip, clip)
        px, py, pw, ph = box_convert(boxes, "xyxy", "cxcywh")[:, :, None].unbind(1)  # as mmdet computes them
        g = torch.stack([px + pw * dx, py + ph * dy, pw * dw.exp(), ph * dh.exp()], dim=2)
        return box_convert(g, "cxcywh", "xyxy").flatten(1)


class LevelRoIAlign(MultiScaleRoIAlign):
    """mmdet's SingleRoIExtractor with mmcv's RoIAlign, in place of torchvision's MultiScaleRoIAlign.

    featmap_names: the levels to pool from (finest first); strides: theirs (4, 8, 16, 32).
    """

    def __init__(self, featmap_names: Sequence[str], output_size: int, strides: Sequence[int]):
        super().__init__(list(featmap_names), output_size, sampling_ratio=0)
        if len(featmap_names) != len(strides):
            raise ValueError(f"{len(featmap_names)} feature maps but {len(strides)} strides")
        self.strides = tuple(strides)

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """x: {name: (B, C, H, W)}; boxes: per image (N_i, 4) xyxy in the input -> (sum N_i, C, s, s)."""
        feats = [x[n] for n in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
        scale = box_area(rois[:, 1:]).sqrt()
        level = torch.floor(torch.log2(scale / FINEST_SCALE + 1e-6)).clamp(0, len(feats) - 1).long()
        out = feats[0].new_zeros(len(rois), feats[0].shape[1], *self.output_size)
        for i, (f, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.where(level == i)[0]
            if idx.numel():
                out[idx] = roi_align(f, rois[idx].to(f.dtype), self.output_size, 1.0 / stride,
                                     sampling_ratio=0, aligned=True)
        return out


def preprocess(image: torch.Tensor, cfg: DetectionConfig) -> tuple[torch.Tensor, tuple[int, int],
                                                                   torch.Tensor]:
    """mmdet's test pipeline for one (3, H, W) image in [0, 1] (an 8-bit picture divided by 255).

    Returns the network input (1, 3, H', W') (resized, normalised, zero-padded to a multiple of 32), the
    resized size (h, w) and mmdet's scale_factor (w / W, h / H, w / W, h / H) as float32. The 8-bit
    arithmetic runs in float64 whatever the image's dtype (cv2 resizes the uint8 picture itself; in float32
    about 0.06% of the resized values rounded to the other grey level); the input comes in the image's dtype.
    """
    h0, w0 = image.shape[-2:]
    h, w = keep_ratio_size(h0, w0, cfg.min_size, cfg.max_size)
    x = (image[None].double() * 255).round()  # mmdet decodes images to 8-bit arrays
    if (h, w) != (h0, w0):  # cv2 bilinear (half-pixel centres, no antialiasing), written back to uint8
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        x = torch.floor(x + 0.5).clamp_(0, 255)
    x = normalize_image(x)
    x = F.pad(x, (0, -w % SIZE_DIVISOR, 0, -h % SIZE_DIVISOR)).to(image.dtype)
    scale = torch.tensor([w / w0, h / h0, w / w0, h / h0], dtype=torch.float32)
    return x, (h, w), scale.to(image.dtype)


def multiclass_nms(boxes: torch.Tensor, scores: torch.Tensor, score_thresh: float, iou: float,
                   max_num: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmdet's `multiclass_nms`: boxes (N, K, 4) per class, scores (N, K) without background -> the best
    `max_num` (box, class) pairs above `score_thresh` after class-wise NMS: boxes (M, 4), scores, labels
    0..K-1."""
    labels = torch.arange(scores.shape[1], device=scores.device).expand_as(scores).reshape(-1)
    boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
    valid = torch.where(scores > score_thresh)[0]
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    keep = batched_nms(boxes, scores, labels, iou)[:max_num]
    return boxes[keep], scores[keep], labels[keep]


def paste_masks(probs: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """mmdet's `_do_paste_mask` one mask at a time (as on CPU): probs (N, h, w) in boxes (N, 4) of an image
    of `size` (H, W) -> (N, 1, H, W) probabilities, zero beyond a pixel around each box."""
    height, width = size
    out = probs.new_zeros(len(probs), 1, height, width)
    for i, (m, (x0, y0, x1, y1)) in enumerate(zip(probs, boxes.tolist())):
        xa, ya = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        xb, yb = min(math.ceil(x1) + 1, width), min(math.ceil(y1) + 1, height)
        if xb <= xa or yb <= ya:
            continue
        gx = (torch.arange(xa, xb, dtype=probs.dtype, device=probs.device) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(ya, yb, dtype=probs.dtype, device=probs.device) + 0.5 - y0) / (y1 - y0) * 2 - 1
        gx, gy = gx.masked_fill(gx.isinf(), 0), gy.masked_fill(gy.isinf(), 0)  # a zero-width box: as mmdet
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]
        out[i, 0, ya:yb, xa:xb] = F.grid_sample(m[None, None], grid, align_corners=False)[0, 0]
    return out
