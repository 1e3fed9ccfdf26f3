"""Full-size outputs from low-resolution class maps, in memory that grows with H x W, not K x H x W.

Bilinear upsampling (align_corners=False) of K score maps to a large image would hold K x H x W floats.
`render_labels` upsamples a few classes at a time with F.interpolate and keeps a running maximum, so the
labels are exactly the argmax of the full-size bilinear maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKGROUND = -1  # label of background pixels (threshold or pseudo-class)
_CHUNK = 1 << 24  # elements (classes x H x W) upsampled at once (64 MiB float32)


def upsample(maps: torch.Tensor, out_hw: tuple[int, int], extent: tuple[float, float]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of maps ([N,] K, h, w) to ([N,] K, H, W), where the maps' first
    `extent` cells (h, w at most: the rest is padding) cover the output: output pixel o samples source
    coordinate (o + 0.5) * extent / H - 0.5."""
    x = maps if maps.ndim == 4 else maps[None]
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    if tuple(extent) == tuple(x.shape[2:]):
        out = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
    else:
        scale = (out_hw[0] / extent[0], out_hw[1] / extent[1])  # F.interpolate samples with exactly this scale
        out = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False,
                            recompute_scale_factor=False)[:, :, :out_hw[0], :out_hw[1]]
    return out if maps.ndim == 4 else out[0]


def render_labels(maps: torch.Tensor, num_classes: int, extent: tuple[float, float], out_hw: tuple[int, int],
                  threshold: float | None = None, on: str = "score", logit_scale: float = 100.0) -> torch.Tensor:
    """Labels (H, W) int64: the argmax of the full-size maps over K' >= num_classes maps (maps past
    `num_classes` are background pseudo-classes -> BACKGROUND); with a threshold, pixels whose best score
    (on="score") or best probability softmax(logit_scale * scores) (on="prob") is below it -> BACKGROUND.

    Memory: a few classes at a time (at most _CHUNK elements) plus four H x W planes (best score, 16-bit
    labels, a mask, and the log-sum-exp for on="prob"), then the int64 result."""
    h, w = out_hw
    k = maps.shape[0]
    labels = torch.zeros((h, w), dtype=torch.int16 if k < 2**15 else torch.int32, device=maps.device)
    best = lse = None
    step = max(1, _CHUNK // max(h * w, 1))
    for c0 in range(0, k, step):
        s = upsample(maps[c0:c0 + step], out_hw, extent)
        top, idx = (s[0], None) if s.shape[0] == 1 else s.max(dim=0)
        if best is None:
            best = top.clone()
            labels.fill_(c0) if idx is None else labels.copy_(idx)
        else:
            better = top > best  # strict: the first class wins ties, like argmax
            if idx is None:
                labels.masked_fill_(better, c0)
            else:
                labels = torch.where(better, (idx + c0).to(labels.dtype), labels)
            torch.maximum(best, top, out=best)
            del better
        if threshold is not None and on == "prob":
            part = torch.logsumexp(logit_scale * s, dim=0)
            lse = part if lse is None else torch.logaddexp(lse, part, out=lse)
        del s, top, idx
    labels[labels >= num_classes] = BACKGROUND
    if threshold is not None:
        value = best if on == "score" else best.mul_(logit_scale).sub_(lse).exp_()
        labels[value < threshold] = BACKGROUND
    del best, lse
    return labels.long()
