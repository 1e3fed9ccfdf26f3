"""Prediction on whole images: resize like the authors' test pipeline, whole or sliding-window inference,
multi-scale + flip, back to the original size.

    r = denseclip.predict(model, "photo.jpg")                                   # the model's test pipeline
    r = denseclip.predict(model, "photo.jpg", test=TestConfig(mode="whole"))    # or any other
    r.labels  (H, W) class index per pixel      r.probs  (K, H, W) class probabilities
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import TestConfig
from .data.images import load_image
from .data.transforms import normalize_image, resize_keep_ratio, to_image_tensor
from .metrics import class_coverage


@dataclass
class SegmentationResult:
    """labels (H, W) int64 and probs (K, H, W) float32 (softmax averaged over augmentations), input-sized."""

    labels: torch.Tensor
    probs: torch.Tensor | None
    class_names: tuple[str, ...]
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def coverage(self) -> np.ndarray:
        """Fraction of pixels assigned to each class (K,)."""
        return class_coverage(self.labels, len(self.class_names))


def slide_windows(h: int, w: int, crop: int | tuple[int, int],
                  stride: int | tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Window boxes (y1, y2, x1, x2) exactly as mmseg's slide_inference places them."""
    crop, stride = ((v, v) if isinstance(v, int) else tuple(v) for v in (crop, stride))
    if min(stride) <= 0:
        raise ValueError(f"stride must be positive, got {stride}")

    def spans(size: int, c: int, s: int) -> list[tuple[int, int]]:  # along one axis; the last flush
        ends = [min(i * s + c, size) for i in range(max(size - c + s - 1, 0) // s + 1)]
        return [(max(e - c, 0), e) for e in ends]

    rows, cols = spans(h, crop[0], stride[0]), spans(w, crop[1], stride[1])
    return [(y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in cols]


def slide(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, crop, stride,
          batch: int = 4) -> torch.Tensor:
    """Sliding-window inference as mmseg's: fn(crops (N*B, 3, h, w)) -> maps (N*B, C, h, w) at the crops'
    size; the windows' maps are summed into (B, C, H, W) and divided by the windows covering each pixel."""
    b, _, h, w = x.shape
    boxes = slide_windows(h, w, crop, stride)
    out, count = None, x.new_zeros((1, 1, h, w))
    for i in range(0, len(boxes), batch):
        chunk = boxes[i:i + batch]
        crops = torch.cat([x[:, :, y1:y2, x1:x2] for (y1, y2, x1, x2) in chunk])  # all crops share one size
        maps = fn(crops).float().unflatten(0, (len(chunk), b))
        if out is None:
            out = maps.new_zeros((b, maps.shape[2], h, w))
        for (y1, y2, x1, x2), m in zip(chunk, maps):
            out[:, :, y1:y2, x1:x2] += m
            count[:, :, y1:y2, x1:x2] += 1
    return out / count


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    """The model's logits resized to the input size: (B, K, H, W)."""
    return F.interpolate(model(x).float(), size=x.shape[2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def predict(model, image, test: TestConfig | None = None, *, amp_dtype: torch.dtype | None = None,
            return_probs: bool = True) -> SegmentationResult:
    """Segment one image with a DenseCLIP model.

    image: a path, PIL image, numpy array (H, W[, C]) or tensor (C, H, W); any mode (grayscale, RGBA,
    16-bit) is converted to RGB. test: the pipeline (default: the model's own, `model.cfg.test`: short
    side 512, slide 512/341 for the ADE20K presets); probabilities are averaged over its scales and flips
    (mmseg's aug_test). The model runs in its weights' dtype (`model.to(torch.bfloat16)`: the fast path on
    CPUs with AVX512-BF16 and on GPUs, see denseclip.clip.fast_dtype); logits, probabilities and labels are
    computed in float32. amp_dtype: e.g. torch.bfloat16 to run fp32 weights under autocast (training).
    """
    t0 = time.perf_counter()
    test = test or model.cfg.test
    rgb = load_image(image)
    h0, w0 = rgb.shape[:2]
    weights = next(model.parameters())
    x0 = to_image_tensor(rgb).to(weights.device)
    was_training = model.training
    model.eval()
    probs = None
    try:
        for s in test.scales:
            x = normalize_image(resize_keep_ratio(x0, int(test.short_side * s), int(test.max_long_side * s)))
            x = x.to(weights.dtype)  # the model's precision (bfloat16 weights: the fast path); logits in fp32
            for flipped in ((False, True) if test.flip else (False,)):
                xi = x.flip(-1) if flipped else x
                with torch.autocast(weights.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = _logits(model, xi) if test.mode == "whole" else \
                        slide(lambda crops: _logits(model, crops), xi, test.crop, test.stride, test.batch)
                logits = F.interpolate(logits.float(), size=(h0, w0), mode="bilinear", align_corners=False)
                p = logits.softmax(dim=1)[0]
                p = p.flip(-1) if flipped else p
                probs = p if probs is None else probs + p
    finally:
        model.train(was_training)
    probs = probs / (len(test.scales) * (2 if test.flip else 1))
    return SegmentationResult(labels=probs.argmax(dim=0).cpu(), probs=probs.cpu() if return_probs else None,
                              class_names=tuple(model.cfg.class_names), seconds=time.perf_counter() - t0,
                              info={"test": test.to_dict(), "input_size": (h0, w0)})
