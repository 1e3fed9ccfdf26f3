"""An independent restatement of the DenseCLIP authors' detectors at test time (test oracle).

The authors' RetinaNet / Mask R-CNN (raoyongming/DenseCLIP, detection/denseclip/*.py) on mmdetection 2.17
and mmcv 1.3.17, written from mmdetection's documented behaviour in its own style, for the parity tests
of `denseclip.load_detector` on their released checkpoints. Nothing here imports `denseclip` or calls
torchvision's detection code: anchors, box decoding, NMS, RoIAlign, resizing and mask pasting are
spelled out (slowly, for small inputs). Module and parameter names are those of their state dicts:
backbone, text_encoder, context_decoder, contexts, gamma, neck.{lateral,fpn}_convs.N.conv,
bbox_head.{cls,reg}_convs.N.conv / retina_cls / retina_reg; rpn_head.rpn_{conv,cls,reg};
roi_head.bbox_head.shared_fcs.N / fc_cls / fc_reg; roi_head.mask_head.convs.N.conv / upsample / conv_logits.

Their test configs: RetinaNet nms_pre 1000, score_thr 0.05, NMS IoU 0.5, 100 per image; Mask R-CNN RPN
nms_pre 1000, max_per_img 1000, NMS 0.7, RCNN score_thr 0.05, NMS 0.5, 100, mask_thr_binary 0.5;
Resize img_scale (1333, 800) keep_ratio, Normalize with CLIP's mean/std x 255, Pad size_divisor 32.
"""

from __future__ import annotations

import math
import types

import numpy as np
import torch
import torch.nn.functional as F
from reference_authors import (
    AuthorsCLIPResNet,
    AuthorsContextDecoder,
    AuthorsTextContextEncoder,
    DenseAttentionPool,
    tokenize_names,
)
from torch import nn

MEAN = np.array([0.48145466, 0.4578275, 0.40821073]) * 255
STD = np.array([0.26862954, 0.26130258, 0.27577711]) * 255
RETINA_TEST = dict(nms_pre=1000, score_thr=0.05, iou=0.5, max_per_img=100)
RPN_TEST = dict(nms_pre=1000, max_per_img=1000, iou=0.7)
RCNN_TEST = dict(score_thr=0.05, iou=0.5, max_per_img=100, mask_thr_binary=0.5)


# ---------------------------------------------------------------------------------------------
# modules in their layout
# ---------------------------------------------------------------------------------------------

class CropAttentionPool(DenseAttentionPool):
    """Their detection AttentionPool2d: the positional grid is *cropped* to the feature map, not resized."""

    def forward(self, feat):
        b, c, h, w = feat.shape
        seq = feat.flatten(2).permute(2, 0, 1)
        seq = torch.cat([seq.mean(0, keepdim=True), seq], 0)
        pe = self.positional_embedding
        spatial = pe[1:].reshape(self.grid, self.grid, c)[:h, :w].reshape(-1, c)
        seq = seq + torch.cat([pe[:1], spatial], 0)[:, None, :]
        out, _ = F.multi_head_attention_forward(
            seq, seq, seq, c, self.heads, None,
            torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]), None, None, False, 0.0,
            self.c_proj.weight, self.c_proj.bias, training=False, need_weights=False,
            use_separate_proj_weight=True, q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight)
        out = out.permute(1, 2, 0)
        return out[:, :, 0], out[:, :, 1:].reshape(b, -1, h, w)


class ConvModule(nn.Module):
    """mmcv ConvModule without norm: conv (with bias) [+ ReLU]; the conv is called `conv`."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2)
        self.relu = relu

    def forward(self, x):
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class FPN(nn.Module):
    """mmdet FPN: nearest top-down; extra levels by max pooling, or convs on the input C5 ("on_input")
    with no ReLU between them (relu_before_extra_convs=False)."""

    def __init__(self, in_channels, out: int, start_level: int, extra_on_input: bool, num_outs: int = 5):
        super().__init__()
        self.start, self.extra_on_input, self.num_outs = start_level, extra_on_input, num_outs
        used = len(in_channels) - start_level
        self.lateral_convs = nn.ModuleList(ConvModule(c, out, 1) for c in in_channels[start_level:])
        self.fpn_convs = nn.ModuleList(ConvModule(out, out, 3) for _ in range(used))
        if extra_on_input:
            for i in range(num_outs - used):
                self.fpn_convs.append(ConvModule(in_channels[-1] if i == 0 else out, out, 3, stride=2))

    def forward(self, inputs):
        lat = [conv(inputs[i + self.start]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        outs = [self.fpn_convs[i](lat[i]) for i in range(len(lat))]
        if not self.extra_on_input:
            while len(outs) < self.num_outs:
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            return outs
        outs.append(self.fpn_convs[len(lat)](inputs[-1]))
        while len(outs) < self.num_outs:
            outs.append(self.fpn_convs[len(outs)](outs[-1]))
        return outs


class RetinaHead(nn.Module):
    def __init__(self, k: int, c: int, anchors: int = 9, convs: int = 4):
        super().__init__()
        self.cls_convs = nn.ModuleList(ConvModule(c, c, 3, relu=True) for _ in range(convs))
        self.reg_convs = nn.ModuleList(ConvModule(c, c, 3, relu=True) for _ in range(convs))
        self.retina_cls = nn.Conv2d(c, anchors * k, 3, padding=1)
        self.retina_reg = nn.Conv2d(c, anchors * 4, 3, padding=1)

    def forward_single(self, x):
        cls, reg = x, x
        for conv in self.cls_convs:
            cls = conv(cls)
        for conv in self.reg_convs:
            reg = conv(reg)
        return self.retina_cls(cls), self.retina_reg(reg)


class RPNHead(nn.Module):
    def __init__(self, c: int, anchors: int = 3):
        super().__init__()
        self.rpn_conv = nn.Conv2d(c, c, 3, padding=1)
        self.rpn_cls = nn.Conv2d(c, anchors, 1)
        self.rpn_reg = nn.Conv2d(c, anchors * 4, 1)

    def forward_single(self, x):
        x = F.relu(self.rpn_conv(x))
        return self.rpn_cls(x), self.rpn_reg(x)


class Shared2FCBBoxHead(nn.Module):
    def __init__(self, k: int, c: int, fc: int):
        super().__init__()
        self.shared_fcs = nn.ModuleList([nn.Linear(c * 49, fc), nn.Linear(fc, fc)])
        self.fc_cls = nn.Linear(fc, k + 1)  # background is the last class
        self.fc_reg = nn.Linear(fc, 4 * k)  # class-specific, no background

    def forward(self, x):
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class FCNMaskHead(nn.Module):
    def __init__(self, k: int, c: int, width: int):
        super().__init__()
        self.convs = nn.ModuleList(ConvModule(c if i == 0 else width, width, 3, relu=True) for i in range(4))
        self.upsample = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.conv_logits = nn.Conv2d(width, k, 1)

    def forward(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))


class RoIHead(nn.Module):
    def __init__(self, k: int, c: int, fc: int, mask_width: int):
        super().__init__()
        self.bbox_head = Shared2FCBBoxHead(k, c, fc)
        self.mask_head = FCNMaskHead(k, c, mask_width)


class AuthorsDetector(nn.Module):
    """DenseCLIP_RetinaNet (kind="retinanet") or DenseCLIP_MaskRCNN (kind="maskrcnn"), eval only."""

    def __init__(self, kind: str, class_names, layers=(1, 1, 1, 1), width: int = 8, embed_dim: int = 64,
                 input_resolution: int = 1344, text=(64, 2), decoder=(64, 1, 2), fpn: int = 16, fc: int = 32,
                 mask_width: int = 16, tau: float = 0.07):
        """Tiny by default; their RN50 RetinaNet is layers=(3, 4, 6, 3), width=64, embed_dim=1024,
        text=(512, 12), decoder=(256, 4, 3), fpn=256 (Mask R-CNN: fc=1024, mask_width=256)."""
        super().__init__()
        k = len(class_names)
        self.kind, self.tau = kind, tau
        self.backbone = AuthorsCLIPResNet(list(layers), width, embed_dim, input_resolution)
        self.backbone.attnpool = CropAttentionPool(input_resolution // 32, width * 32, 32, embed_dim)
        text_width, text_layers = text
        self.text_encoder = AuthorsTextContextEncoder(13, 49408, text_width, text_width // 64, text_layers,
                                                      embed_dim)
        self.context_decoder = AuthorsContextDecoder(*decoder, embed_dim)
        self.contexts = nn.Parameter(torch.randn(1, 8, text_width))
        self.gamma = nn.Parameter(torch.ones(embed_dim) * 1e-4)
        self.texts = tokenize_names(class_names, 5)  # a plain attribute: not in the state dict, as theirs
        stages = [width * 4 * 2 ** i for i in range(4)]
        stages[3] += k
        if kind == "retinanet":
            self.neck = FPN(stages, fpn, start_level=1, extra_on_input=True)
            self.bbox_head = RetinaHead(k, fpn)
        else:
            self.neck = FPN(stages, fpn, start_level=0, extra_on_input=False)
            self.rpn_head = RPNHead(fpn)
            self.roi_head = RoIHead(k, fpn, fc, mask_width)

    def double(self):
        """float64 everywhere (their fp16-minded LayerNorms compute in float32: plain LayerNorms here)."""
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.forward = types.MethodType(nn.LayerNorm.forward, m)
        return super().double()

    def extract_feat(self, img):
        x = self.backbone(img)
        global_feat, dense = x[4]
        b, c, h, w = dense.shape
        context = torch.cat([global_feat.reshape(b, c, 1), dense.reshape(b, c, h * w)], dim=2)
        context = context.permute(0, 2, 1)
        text = self.text_encoder(self.texts, self.contexts).expand(b, -1, -1)
        text = text + self.gamma * self.context_decoder(text, context)
        score = torch.einsum("bchw,bkc->bkhw", F.normalize(dense, dim=1), F.normalize(text, dim=-1))
        score = score / self.tau
        feats = list(x[:4])
        feats[3] = torch.cat([feats[3], score], dim=1)
        return self.neck(feats)


def randomize_(model: AuthorsDetector, seed: int) -> AuthorsDetector:
    """Random weights in every tensor (BN statistics too), scaled so that every test-time step matters:
    scores straddle the thresholds, the score maps weigh in C5's lateral conv, masks cover about half."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1, generator=g)
                mod.running_var.uniform_(0.5, 1.5, generator=g)
            for name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm)):
                    p.uniform_(0.5, 1.5, generator=g) if name == "weight" else p.normal_(0, 0.1, generator=g)
                elif name.endswith("bias"):
                    p.normal_(0, 0.05, generator=g)
                elif p.ndim >= 2:
                    p.normal_(0, 1 / math.sqrt(p[0].numel()), generator=g)
                else:
                    p.normal_(0, 0.5, generator=g)
        model.contexts.normal_(0, 1, generator=g)
        model.gamma.uniform_(0.1, 1.0, generator=g)
        k = len(model.texts)
        model.neck.lateral_convs[-1].conv.weight[:, -k:] *= 30  # the text path shows in the detections
        if model.kind == "retinanet":
            model.bbox_head.retina_cls.bias.fill_(-2.5)  # sigmoid ~0.08: many candidates under score_thr 0.05
        else:  # proposals near their anchors: random regressors would clip many to zero-area boxes, whose
            # identical (all-zero) RoI features tie in score, and tied detections have no defined order
            model.rpn_head.rpn_reg.weight.mul_(0.1)
            model.roi_head.mask_head.conv_logits.weight.mul_(4)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# the test pipeline: LoadImageFromFile -> Resize(keep_ratio) -> Normalize -> Pad(32)
# ---------------------------------------------------------------------------------------------

def _linear_taps(n_in: int, n_out: int):
    """cv2 INTER_LINEAR source taps of every output pixel: (index, index + 1, weight of index + 1)."""
    scale = n_in / n_out
    src = (np.arange(n_out) + 0.5) * scale - 0.5
    lo = np.floor(src).astype(np.int64)
    frac = src - lo
    frac[lo < 0], lo[lo < 0] = 0.0, 0
    top = lo >= n_in - 1
    frac[top], lo[top] = 0.0, n_in - 1
    return lo, np.minimum(lo + 1, n_in - 1), frac


def pipeline(img: np.ndarray, scale=(1333, 800)):
    """uint8 (H, W, 3) RGB -> (input (1, 3, H', W') float64, img_meta with img_shape, scale_factor)."""
    h, w = img.shape[:2]
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    new_w, new_h = int(w * factor + 0.5), int(h * factor + 0.5)
    y0, y1, fy = _linear_taps(h, new_h)
    x0, x1, fx = _linear_taps(w, new_w)
    src = img.astype(np.float64)
    rows = src[y0] * (1 - fy)[:, None, None] + src[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    resized = np.clip(np.floor(out + 0.5), 0, 255)  # cv2 writes the result back as uint8
    norm = (resized - MEAN) / STD
    ph, pw = int(math.ceil(new_h / 32) * 32), int(math.ceil(new_w / 32) * 32)
    padded = np.zeros((ph, pw, 3))
    padded[:new_h, :new_w] = norm
    meta = {"ori_shape": (h, w), "img_shape": (new_h, new_w),
            "scale_factor": np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)}
    return torch.from_numpy(padded).permute(2, 0, 1)[None].contiguous(), meta


# ---------------------------------------------------------------------------------------------
# anchors, delta2bbox, NMS
# ---------------------------------------------------------------------------------------------

def level_anchors(stride: int, scales, ratios, feat_h: int, feat_w: int) -> torch.Tensor:
    """AnchorGenerator (center offset 0, scale_major): base anchors of size stride * scale, on the grid."""
    scales, ratios = torch.tensor(scales, dtype=torch.float64), torch.tensor(ratios, dtype=torch.float64)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)
    xs = torch.arange(feat_w, dtype=torch.float64) * stride
    ys = torch.arange(feat_h, dtype=torch.float64) * stride
    xx, yy = xs.repeat(len(ys)), ys.view(-1, 1).repeat(1, len(xs)).view(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1)
    return (base[None, :, :] + shifts[:, None, :]).view(-1, 4)


def delta2bbox(rois, deltas, stds, max_shape):
    """DeltaXYWHBBoxCoder.decode: rois (N, 4), deltas (N, 4k), means 0, wh_ratio_clip 16 / 1000, clipped."""
    stds = deltas.new_tensor(stds).repeat(deltas.shape[1] // 4)
    d = deltas * stds
    dx, dy, dw, dh = d[:, 0::4], d[:, 1::4], d[:, 2::4], d[:, 3::4]
    max_ratio = abs(math.log(16 / 1000))
    dw, dh = dw.clamp(-max_ratio, max_ratio), dh.clamp(-max_ratio, max_ratio)
    px = ((rois[:, 0] + rois[:, 2]) * 0.5)[:, None]
    py = ((rois[:, 1] + rois[:, 3]) * 0.5)[:, None]
    pw, ph = (rois[:, 2] - rois[:, 0])[:, None], (rois[:, 3] - rois[:, 1])[:, None]
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    x1, y1 = (gx - gw * 0.5).clamp(0, max_shape[1]), (gy - gh * 0.5).clamp(0, max_shape[0])
    x2, y2 = (gx + gw * 0.5).clamp(0, max_shape[1]), (gy + gh * 0.5).clamp(0, max_shape[0])
    return torch.stack([x1, y1, x2, y2], dim=-1).view(deltas.shape)


def greedy_nms(boxes, scores, iou_thr) -> list[int]:
    """mmcv nms: best first; drop every later box whose IoU with a kept one is > iou_thr."""
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order]
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    over = np.zeros((len(b), len(b)), dtype=bool)  # over[i, j]: IoU(i, j) > iou_thr, in score order
    for start in range(0, len(b), 256):
        rows = slice(start, start + 256)
        lo = torch.maximum(b[rows, None, :2], b[None, :, :2])
        hi = torch.minimum(b[rows, None, 2:], b[None, :, 2:])
        inter = (hi - lo).clamp(min=0).prod(dim=-1)
        over[rows] = (inter / (areas[rows, None] + areas[None, :] - inter) > iou_thr).numpy()
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
    return order[keep].tolist()


def batched_nms(boxes, scores, groups, iou_thr) -> torch.Tensor:
    """NMS within each group (class or level), the kept indices sorted by score."""
    keep = []
    for g in torch.unique(groups):
        idx = torch.where(groups == g)[0]
        keep += idx[greedy_nms(boxes[idx], scores[idx], iou_thr)].tolist()
    keep = torch.tensor(keep, dtype=torch.long)
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]


def multiclass_nms(bboxes, scores, score_thr, iou, max_num):
    """bboxes (N, 4) or (N, 4K), scores (N, K + 1) with background last -> (boxes, scores, labels)."""
    k = scores.shape[1] - 1
    boxes = bboxes.view(len(scores), -1, 4).expand(len(scores), k, 4).reshape(-1, 4)
    s = scores[:, :-1].reshape(-1)
    labels = torch.arange(k).view(1, -1).expand(len(scores), k).reshape(-1)
    valid = s > score_thr
    boxes, s, labels = boxes[valid], s[valid], labels[valid]
    keep = batched_nms(boxes, s, labels, iou)[:max_num]
    return boxes[keep], s[keep], labels[keep]


# ---------------------------------------------------------------------------------------------
# RoIAlign (mmcv, aligned=True, sampling_ratio=0) and mask pasting
# ---------------------------------------------------------------------------------------------

def _bilinear(feat, y, x):
    """mmcv's bilinear_interpolate of feat (C, H, W) at y (R, Ny) x x (R, Nx) -> (C, R, Ny, Nx); 0 beyond
    one pixel outside the map, clamped to the border within it."""
    _, height, width = feat.shape
    yy, xx = y[:, :, None].expand(-1, -1, x.shape[1]), x[:, None, :].expand(-1, y.shape[1], -1)
    outside = (yy < -1) | (yy > height) | (xx < -1) | (xx > width)
    yy, xx = yy.clamp(min=0), xx.clamp(min=0)
    y_lo, x_lo = yy.floor().long(), xx.floor().long()
    y_top, x_top = y_lo >= height - 1, x_lo >= width - 1
    y_lo, x_lo = torch.where(y_top, height - 1, y_lo), torch.where(x_top, width - 1, x_lo)
    yy, xx = torch.where(y_top, y_lo.to(yy.dtype), yy), torch.where(x_top, x_lo.to(xx.dtype), xx)
    y_hi, x_hi = torch.where(y_top, y_lo, y_lo + 1), torch.where(x_top, x_lo, x_lo + 1)
    ly, lx = yy - y_lo, xx - x_lo
    v = (feat[:, y_lo, x_lo] * (1 - ly) * (1 - lx) + feat[:, y_lo, x_hi] * (1 - ly) * lx
         + feat[:, y_hi, x_lo] * ly * (1 - lx) + feat[:, y_hi, x_hi] * ly * lx)
    return torch.where(outside, 0.0, v)


def _samples(start, bin_size, out: int, n: int):
    """Sample coordinates (R, out * n): n per bin, at the centres of n equal parts of each of the out bins."""
    cells = torch.arange(out, dtype=torch.float64)[:, None]
    inner = (torch.arange(n, dtype=torch.float64)[None, :] + 0.5) / n
    return start[:, None] + (cells + inner).reshape(-1)[None, :] * bin_size


def roi_align(feat, rois, out: int, spatial_scale: float):
    """mmcv RoIAlign(aligned=True, sampling_ratio=0): rois (R, 4) of feat (C, H, W) -> (R, C, out, out), each
    bin the mean of ceil(roi size / out) x ceil(roi size / out) bilinear samples (none: 0)."""
    result = feat.new_zeros(len(rois), feat.shape[0], out, out)
    box = rois.to(torch.float64) * spatial_scale - 0.5  # aligned: pixel centres at +0.5
    size = box[:, 2:] - box[:, :2]  # (w, h)
    grid = torch.ceil(size / out).long()  # samples per bin along x and y
    for gw, gh in torch.unique(grid, dim=0).tolist():  # RoIs with the same sampling grid at once
        same = torch.where((grid[:, 0] == gw) & (grid[:, 1] == gh))[0]
        for idx in same.split(32) if gw * gh else ():  # in chunks: bounded memory at full width
            ys = _samples(box[idx, 1], size[idx, 1:2] / out, out, gh)
            xs = _samples(box[idx, 0], size[idx, 0:1] / out, out, gw)
            v = _bilinear(feat, ys, xs).reshape(feat.shape[0], len(idx), out, gh, out, gw)
            result[idx] = v.mean(dim=(3, 5)).transpose(0, 1).to(result.dtype)
    return result


def roi_extract(feats, rois, out: int, strides=(4, 8, 16, 32), finest_scale: int = 56):
    """SingleRoIExtractor: level floor(log2(sqrt(w * h) / 56 + 1e-6)) clamped to the 4 levels."""
    result = feats[0].new_zeros(len(rois), feats[0].shape[1], out, out)
    scale = torch.sqrt((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]))
    level = torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, len(strides) - 1).long()
    for lvl, stride in enumerate(strides):
        idx = torch.where(level == lvl)[0]
        if len(idx):
            result[idx] = roi_align(feats[lvl][0], rois[idx], out, 1 / stride)
    return result


def paste_mask(prob, box, img_h: int, img_w: int, thr: float) -> torch.Tensor:
    """_do_paste_mask (skip_empty, one mask): bilinear samples of prob (h, w) at the pixel centres of the box
    (grid_sample semantics, align_corners=False, zero padding) -> bool (img_h, img_w) >= thr."""
    x0, y0, x1, y1 = (float(v) for v in box)
    xa, ya = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
    xb, yb = min(math.ceil(x1) + 1, img_w), min(math.ceil(y1) + 1, img_h)
    mask = torch.zeros(img_h, img_w, dtype=torch.bool)
    if xb <= xa or yb <= ya:
        return mask
    gx = (torch.arange(xa, xb, dtype=torch.float64) + 0.5 - x0) / (x1 - x0) * 2 - 1
    gy = (torch.arange(ya, yb, dtype=torch.float64) + 0.5 - y0) / (y1 - y0) * 2 - 1
    gx[torch.isinf(gx)], gy[torch.isinf(gy)] = 0, 0
    h, w = prob.shape
    u, v = ((gx + 1) * w - 1) / 2, ((gy + 1) * h - 1) / 2  # source pixel coordinates
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    v0, u0 = vv.floor().long(), uu.floor().long()
    fv, fu = vv - v0, uu - u0

    def tap(vi, ui):  # zero padding: taps outside the map read 0
        inside = (vi >= 0) & (vi < h) & (ui >= 0) & (ui < w)
        return torch.where(inside, prob[vi.clamp(0, h - 1), ui.clamp(0, w - 1)], 0.0)

    val = (tap(v0, u0) * (1 - fv) * (1 - fu) + tap(v0, u0 + 1) * (1 - fv) * fu
           + tap(v0 + 1, u0) * fv * (1 - fu) + tap(v0 + 1, u0 + 1) * fv * fu)
    mask[ya:yb, xa:xb] = val >= thr
    return mask


# ---------------------------------------------------------------------------------------------
# simple_test
# ---------------------------------------------------------------------------------------------

def _levels(outputs, per_anchor: int):
    """(1, A * c, H, W) per level -> (H * W * A, c), anchor index fastest, as their reshape."""
    return [o[0].permute(1, 2, 0).reshape(-1, per_anchor) for o in outputs]


@torch.no_grad()
def retinanet_test(model: AuthorsDetector, img: np.ndarray, img_scale=(1333, 800)):
    """(boxes (N, 4) in the original image, scores (N,), labels (N,) 0..K-1)."""
    x, meta = pipeline(img, img_scale)
    feats = model.extract_feat(x.to(model.gamma.dtype))
    k = model.bbox_head.retina_cls.out_channels // 9
    octave = [4 * 2 ** (i / 3) for i in range(3)]
    boxes, scores = [], []
    for stride, f in zip((8, 16, 32, 64, 128), feats):
        cls, reg = model.bbox_head.forward_single(f)
        s, d = _levels([cls], k)[0].sigmoid(), _levels([reg], 4)[0]
        anchors = level_anchors(stride, octave, (0.5, 1.0, 2.0), f.shape[2], f.shape[3])
        if 0 < RETINA_TEST["nms_pre"] < len(s):
            _, top = s.max(dim=1).values.topk(RETINA_TEST["nms_pre"])
            s, d, anchors = s[top], d[top], anchors[top]
        boxes.append(delta2bbox(anchors, d, (1.0, 1.0, 1.0, 1.0), meta["img_shape"]))
        scores.append(s)
    boxes = torch.cat(boxes) / boxes[0].new_tensor(meta["scale_factor"])
    scores = torch.cat(scores)
    scores = torch.cat([scores, scores.new_zeros(len(scores), 1)], dim=1)  # a background column, last
    cfg = RETINA_TEST
    return multiclass_nms(boxes, scores, cfg["score_thr"], cfg["iou"], cfg["max_per_img"])


def rpn_test(model: AuthorsDetector, feats, meta) -> torch.Tensor:
    boxes, scores, ids = [], [], []
    for lvl, (stride, f) in enumerate(zip((4, 8, 16, 32, 64), feats)):
        cls, reg = model.rpn_head.forward_single(f)
        s, d = _levels([cls], 1)[0].reshape(-1).sigmoid(), _levels([reg], 4)[0]
        anchors = level_anchors(stride, (8,), (0.5, 1.0, 2.0), f.shape[2], f.shape[3])
        if 0 < RPN_TEST["nms_pre"] < len(s):
            s, top = s.topk(RPN_TEST["nms_pre"])
            d, anchors = d[top], anchors[top]
        boxes.append(delta2bbox(anchors, d, (1.0, 1.0, 1.0, 1.0), meta["img_shape"]))
        scores.append(s)
        ids.append(torch.full((len(s),), lvl))
    boxes, scores, ids = torch.cat(boxes), torch.cat(scores), torch.cat(ids)
    return boxes[batched_nms(boxes, scores, ids, RPN_TEST["iou"])[: RPN_TEST["max_per_img"]]]


@torch.no_grad()
def maskrcnn_test(model: AuthorsDetector, img: np.ndarray, img_scale=(1333, 800)):
    """(boxes, scores, labels 0..K-1, masks bool (N, H, W) at the original image size)."""
    x, meta = pipeline(img, img_scale)
    feats = model.extract_feat(x.to(model.gamma.dtype))
    proposals = rpn_test(model, feats, meta)
    head = model.roi_head
    cls, reg = head.bbox_head(roi_extract(feats[:4], proposals, 7))
    scores = F.softmax(cls, dim=-1)
    bboxes = delta2bbox(proposals, reg, (0.1, 0.1, 0.2, 0.2), meta["img_shape"])
    factor = bboxes.new_tensor(meta["scale_factor"])
    bboxes = (bboxes.view(len(bboxes), -1, 4) / factor).view(len(bboxes), -1)
    boxes, scores, labels = multiclass_nms(bboxes, scores, RCNN_TEST["score_thr"], RCNN_TEST["iou"],
                                           RCNN_TEST["max_per_img"])
    h, w = meta["ori_shape"]
    if len(boxes) == 0:
        return boxes, scores, labels, torch.zeros(0, h, w, dtype=torch.bool)
    rois = boxes * factor
    probs = head.mask_head(roi_extract(feats[:4], rois, 14)).sigmoid()[torch.arange(len(boxes)), labels]
    thr = RCNN_TEST["mask_thr_binary"]
    masks = torch.stack([paste_mask(p, b, h, w, thr) for p, b in zip(probs, rois / factor)])
    return boxes, scores, labels, masks
