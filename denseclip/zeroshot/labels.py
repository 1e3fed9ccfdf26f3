"""Labels at full size from low-resolution score maps, in memory that grows with H x W, not K x H x W.

Upsampling K score maps to a large image would hold K x H x W floats: `labels_from_maps` upsamples a few
at a time (bilinear, align_corners=False) and keeps a running maximum, so the labels are exactly the argmax
of the full-size maps. The maps are "queries": several may name one class (synonyms: the max wins, as the
peers do for VOC's background); queries past the classes are background pseudo-classes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

BACKGROUND = -1  # label of background pixels (threshold or pseudo-class)
_CHUNK = 1 << 24  # elements (queries x H x W) upsampled at once (64 MiB float32)


def upsample(maps: torch.Tensor, out_hw: tuple[int, int], extent: tuple[float, float]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of maps ([N,] K, h, w) to ([N,] K, H, W), where the maps' first
    `extent` cells (h, w at most: the rest is padding) cover the output: output pixel o samples source
    coordinate (o + 0.5) * extent / H - 0.5."""
    x = maps if maps.ndim == 4 else maps[None]
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    if tuple(extent) == tuple(x.shape[2:]):
        out = x if out_hw == tuple(x.shape[2:]) else F.interpolate(x, size=out_hw, mode="bilinear",
                                                                    align_corners=False)
    else:
        scale = (out_hw[0] / extent[0], out_hw[1] / extent[1])  # F.interpolate samples with this scale
        out = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False,
                            recompute_scale_factor=False)[:, :, :out_hw[0], :out_hw[1]]
    return out if maps.ndim == 4 else out[0]


@dataclass(frozen=True)
class LabelRule:
    """How maps become labels.

    num_classes: maps (queries) map to classes 0..num_classes-1 through `query_class` (default: map i is
        class i); a query whose class is >= num_classes (or negative) is a background pseudo-class.
    threshold: pixels whose best score (on="score") or best probability softmax(logit_scale * maps over all
        queries) (on="prob") is below it -> BACKGROUND.
    area_threshold: SCLIP's rule: classes covering at most this share of the pixels labelled with a class
        (before the threshold; `background_class`, if any, not counted) cannot win; their pixels go to the
        next best query, then the threshold applies.
    excluded: queries (bool (Q,)) that cannot win (still counted in the probabilities' softmax).
    """

    num_classes: int
    query_class: torch.Tensor | None = None
    threshold: float | None = None
    on: str = "score"
    logit_scale: float = 100.0
    area_threshold: float | None = None
    background_class: int | None = None
    excluded: torch.Tensor | None = None


def _argmax_labels(maps: torch.Tensor, extent: tuple[float, float], out_hw: tuple[int, int],
                  rule: LabelRule) -> torch.Tensor:
    """Labels (H, W) int64: the class of the full-size maps' argmax, BACKGROUND for background queries
    and below the rule's threshold (see LabelRule).

    Memory: a few maps at a time (at most _CHUNK elements) plus four H x W planes (best score, 16-bit
    query index, a mask, and the log-sum-exp for on="prob"), then the int64 result."""
    h, w = out_hw
    k = maps.shape[0]
    idx_dtype = torch.int16 if k < 2**15 else torch.int32
    labels = torch.zeros((h, w), dtype=idx_dtype, device=maps.device)
    best = torch.full((h, w), float("-inf"), device=maps.device)
    lse = None
    step = max(1, _CHUNK // max(h * w, 1))
    for c0 in range(0, k, step):
        s = upsample(maps[c0:c0 + step], out_hw, extent).float()
        if rule.threshold is not None and rule.on == "prob":
            part = torch.logsumexp(rule.logit_scale * s, dim=0)
            lse = part if lse is None else torch.logaddexp(lse, part, out=lse)
        if rule.excluded is not None and rule.excluded[c0:c0 + step].any():
            s = s.masked_fill(rule.excluded[c0:c0 + step].to(s.device)[:, None, None], float("-inf"))
        if s.shape[0] == 1:  # one map at a time (huge images): no int64 index plane
            top = s[0]
            better = top > best  # strict: the first query wins ties, like argmax
            labels.masked_fill_(better, c0)
        else:
            top, idx = s.max(dim=0)
            better = top > best
            labels = torch.where(better, (idx + c0).to(idx_dtype), labels)
            del idx
        torch.maximum(best, top, out=best)
        del s, top, better
    classes = torch.arange(k) if rule.query_class is None else rule.query_class.long().cpu()
    classes = torch.where((classes >= 0) & (classes < rule.num_classes), classes, BACKGROUND).to(maps.device)
    out = torch.empty((h, w), dtype=torch.long, device=maps.device)
    flat, flat_out = labels.view(-1), out.view(-1)
    for i in range(0, flat.numel(), 1 << 22):  # query -> class, in bounded pieces
        flat_out[i:i + (1 << 22)] = classes[flat[i:i + (1 << 22)].long()]
    del labels
    if rule.threshold is not None:
        value = best if rule.on == "score" else best.mul_(rule.logit_scale).sub_(lse).exp_()
        out[value < rule.threshold] = BACKGROUND
    return out


def labels_from_maps(maps: torch.Tensor, extent: tuple[float, float], out_hw: tuple[int, int],
                     rule: LabelRule) -> torch.Tensor:
    """Labels (H, W) int64 of maps (Q, h, w) whose first `extent` cells cover the output: the class of the
    full-size bilinear maps' argmax, BACKGROUND for background queries and below the rule's threshold; with
    the rule's area threshold, two passes (see LabelRule)."""
    if not rule.area_threshold:
        return _argmax_labels(maps, extent, out_hw, rule)
    k = rule.num_classes
    first = _argmax_labels(maps, extent, out_hw, replace(rule, threshold=None))
    counts = torch.bincount(first[first >= 0].flatten(), minlength=k)[:k].cpu()
    if rule.background_class is not None:
        counts[rule.background_class] = 0
    drop = counts <= rule.area_threshold * counts.sum()
    if rule.background_class is not None:
        drop[rule.background_class] = False
    query_class = torch.arange(maps.shape[0]) if rule.query_class is None else rule.query_class.long().cpu()
    excluded = ((query_class >= 0) & (query_class < k)) & drop[query_class.clamp(0, k - 1)]
    if rule.excluded is not None:
        excluded |= rule.excluded.cpu()
    return _argmax_labels(maps, extent, out_hw, replace(rule, excluded=excluded))


def class_maps(full: torch.Tensor, query_class: torch.Tensor, num_classes: int, logit_scale: float):
    """Query maps (Q, H, W) -> per class (K, H, W): scores = the max over its queries, probs = the max over
    its queries of softmax(logit_scale * maps) over all Q queries (the peers' rule for synonyms)."""
    probs = (logit_scale * full).softmax(0)
    index = query_class.long().to(full.device)
    k = num_classes
    identity = torch.equal(index[:k], torch.arange(k, device=full.device))
    if identity and not ((index[k:] >= 0) & (index[k:] < k)).any():
        return full[:k], probs[:k]  # one query per class (then background pseudo-classes)
    shape = (num_classes, *full.shape[1:])
    keep = (index >= 0) & (index < num_classes)
    idx = index[keep][:, None, None].expand(-1, *full.shape[1:])
    scores = full.new_full(shape, float("-inf")).scatter_reduce(0, idx, full[keep], "amax")
    return scores, full.new_zeros(shape).scatter_reduce(0, idx, probs[keep], "amax")
