"""Prediction on whole images: resize like the authors' test pipeline, whole or sliding-window inference,
multi-scale + flip, back to the original size.

    r = denseclip.predict(model, "photo.jpg", mode="slide")
    r.labels  (H, W) class index per pixel      r.probs  (K, H, W) class probabilities
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .data.transforms import load_image, normalize_image, resize_keep_ratio, to_image_tensor


@dataclass
class SegmentationResult:
    """labels (H, W) int64, probs (K, H, W) float32 (softmax, averaged over augmentations), at the input size."""

    labels: torch.Tensor
    probs: torch.Tensor | None
    class_names: tuple[str, ...]
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def coverage(self) -> np.ndarray:
        """Fraction of pixels assigned to each class (K,)."""
        counts = torch.bincount(self.labels.flatten(), minlength=len(self.class_names))
        return (counts.float() / self.labels.numel()).numpy()


def slide_windows(h: int, w: int, crop: int | tuple[int, int], stride: int | tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Window boxes (y1, y2, x1, x2) exactly as mmseg's slide_inference places them."""
    h_crop, w_crop = (crop, crop) if isinstance(crop, int) else crop
    h_stride, w_stride = (stride, stride) if isinstance(stride, int) else stride
    if h_stride <= 0 or w_stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    boxes = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * h_stride, wi * w_stride
            y2, x2 = min(y1 + h_crop, h), min(x1 + w_crop, w)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            boxes.append((y1, y2, x1, x2))
    return boxes


def _encode_decode(model, x: torch.Tensor) -> torch.Tensor:
    """Logits resized to the input size: (B, K, H, W)."""
    logits = model(x)
    return F.interpolate(logits.float(), size=x.shape[2:], mode="bilinear", align_corners=False)


def slide_logits(model, x: torch.Tensor, crop, stride, batch_size: int = 4) -> torch.Tensor:
    """Sliding-window logits (B, K, H, W): crops through the model, summed, divided by the overlap count."""
    b, _, h, w = x.shape
    boxes = slide_windows(h, w, crop, stride)
    preds, count = None, x.new_zeros((b, 1, h, w))
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        crops = torch.cat([x[:, :, y1:y2, x1:x2] for (y1, y2, x1, x2) in chunk])  # all crops share one size
        out = _encode_decode(model, crops).reshape(len(chunk), b, -1, crops.shape[2], crops.shape[3])
        if preds is None:
            preds = x.new_zeros((b, out.shape[2], h, w))
        for (y1, y2, x1, x2), o in zip(chunk, out):
            preds[:, :, y1:y2, x1:x2] += o
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


@torch.no_grad()
def predict(model, image, mode: str | None = None, crop: int | None = None, stride: int | None = None,
            scales: Sequence[float] | None = None, flip: bool | None = None, short_side: int | None = None,
            max_long_side: int | None = None, return_probs: bool = True, amp_dtype: torch.dtype | None = None,
            window_batch: int = 4) -> SegmentationResult:
    """Segment one image with a DenseCLIP model.

    image: a path, PIL image, numpy array (H, W[, C]) or tensor (C, H, W); any mode (grayscale, RGBA,
    16-bit) is converted to RGB. Unset arguments come from `model.cfg.test` (the authors' pipeline:
    short side 512, slide 512/341 for the ADE20K presets). mode "whole" runs the resized image at once;
    "slide" runs crop x crop windows with the given stride. scales are ratios of the test size; flip adds
    horizontally flipped predictions. Probabilities are averaged over scales/flips (mmseg's aug_test).
    amp_dtype: e.g. torch.bfloat16 to run under autocast.
    """
    t0 = time.perf_counter()
    cfg = model.cfg.test
    mode = mode or cfg.mode
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    crop, stride = crop or cfg.crop, stride or cfg.stride
    scales = tuple(scales) if scales is not None else tuple(cfg.scales)
    flip = cfg.flip if flip is None else flip
    short_side, max_long_side = short_side or cfg.short_side, max_long_side or cfg.max_long_side
    rgb = load_image(image)
    h0, w0 = rgb.shape[:2]
    device = next(model.parameters()).device
    x0 = to_image_tensor(rgb).to(device)
    was_training = model.training
    model.eval()
    probs = None
    try:
        for s in scales:
            x = resize_keep_ratio(x0, int(short_side * s), int(max_long_side * s))
            x = normalize_image(x)
            for flipped in ((False, True) if flip else (False,)):
                xi = x.flip(-1) if flipped else x
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = slide_logits(model, xi, crop, stride, window_batch) if mode == "slide" \
                        else _encode_decode(model, xi)
                logits = F.interpolate(logits.float(), size=(h0, w0), mode="bilinear", align_corners=False)
                p = logits.softmax(dim=1)[0]
                p = p.flip(-1) if flipped else p
                probs = p if probs is None else probs + p
    finally:
        model.train(was_training)
    n = len(scales) * (2 if flip else 1)
    probs = probs / n
    labels = probs.argmax(dim=0).cpu()
    return SegmentationResult(labels=labels, probs=probs.cpu() if return_probs else None,
                              class_names=tuple(model.cfg.class_names), seconds=time.perf_counter() - t0,
                              info={"mode": mode, "scales": scales, "flip": flip, "input_size": (h0, w0)})
