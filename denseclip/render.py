"""Full-size outputs from low-resolution class maps, tile by tile, in bounded memory.

Bilinear upsampling (align_corners=False) of K score maps to a huge image would need K x H x W floats.
`render_maps` produces the labels (the exact argmax of the full-size bilinear maps) and, when asked,
the full-size scores / probabilities one tile at a time; in a tile only the classes that can win there
are upsampled (`_candidates`, an exact pruning).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BACKGROUND = -1  # label of background pixels (threshold or pseudo-class)
_CHUNK = 1 << 24  # elements (K x tile) of one tile while rendering full-size outputs (64 MiB float32)


def _axis(n_out: int, n_src: int, extent: float, start: int = 0, stop: int | None = None):
    """Source indices and weights of bilinear (align_corners=False) sampling: output pixel o has its centre
    at source coordinate (o + 0.5) * extent / n_out - 0.5, where `extent` source cells cover the output."""
    o = torch.arange(start, n_out if stop is None else stop, dtype=torch.float64)
    pos = ((o + 0.5) * (extent / n_out) - 0.5).clamp(0, n_src - 1)
    i0 = pos.floor().long()
    return i0, (i0 + 1).clamp(max=n_src - 1), (pos - i0).float()


def resample(x: torch.Tensor, out_hw: tuple[int, int], extent: tuple[float, float],
             rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> torch.Tensor:
    """Bilinear resize of maps (K, h, w) to (K, H, W) -- or only the output tile rows x cols -- where the
    maps' first `extent` cells cover the output (extent = (h, w) is F.interpolate's align_corners=False)."""
    (h, w), (oh, ow) = x.shape[1:], out_hw
    i0, i1, wy = _axis(oh, h, extent[0], *(rows or (0, oh)))
    j0, j1, wx = _axis(ow, w, extent[1], *(cols or (0, ow)))
    lo, hi = int(j0[0]), int(j1[-1]) + 1  # the source columns this tile needs
    x = x[:, i0, lo:hi] * (1 - wy)[:, None] + x[:, i1, lo:hi] * wy[:, None]  # (K, r, hi - lo)
    n = torch.arange(len(j0))
    m = torch.zeros(hi - lo, len(j0)).index_put_((j0 - lo, n), 1 - wx).index_put_((j1 - lo, n), wx, accumulate=True)
    return x @ m  # 2 non-zeros a column, but a small dense matmul beats gathers on CPU


def _bands(n_out: int, n_src: int, extent: float, lo: int, hi: int) -> list[tuple[int, int]]:
    """Output ranges [a, b) cut where the source cell pair (i0, i0 + 1) changes, each at most `hi` long
    and, but for the last, at least `lo` (tiles that follow the source grid keep candidate sets small)."""
    counts = torch.unique_consecutive(_axis(n_out, n_src, extent)[0], return_counts=True)[1].tolist()
    edges, run = [0], 0
    for c in counts:
        while c > 0:
            take = min(c, hi - run)
            run, c = run + take, c - take
            if run >= lo:
                edges.append(edges[-1] + run)
                run = 0
    if run:
        edges.append(edges[-1] + run)
    return list(zip(edges[:-1], edges[1:]))


def _candidates(maps: torch.Tensor) -> torch.Tensor:
    """(K, h, w) -> bool (K, h, w): whether class k can be the argmax anywhere between source cells
    (i..i+1, j..j+1). Bilinear values there are convex mixes of the 4 corners, so a class whose best
    corner is below another class's worst corner never wins (an exact pruning, not a heuristic)."""
    m = F.pad(maps[None], (0, 1, 0, 1), mode="replicate")[0]
    a, b, c, d = m[:, :-1, :-1], m[:, 1:, :-1], m[:, :-1, 1:], m[:, 1:, 1:]
    lo = torch.minimum(torch.minimum(a, b), torch.minimum(c, d)).amax(0)
    return torch.maximum(torch.maximum(a, b), torch.maximum(c, d)) >= lo



def render_maps(maps: torch.Tensor, n_cls: int, extent: tuple[float, float], threshold: float | None, on: str,
                logit_scale: float, out_hw: tuple[int, int], want_labels: bool, want_maps: bool):
    """Low-resolution maps (K', h, w) -> labels (H, W) and/or scores, probs (K, H, W), tile by tile.

    Labels equal the argmax of the full-size bilinear maps; only classes that can win in a chunk
    (`_candidates`) are upsampled in a tile, unless probabilities are needed."""
    (H, W), k2 = out_hw, maps.shape[0]
    labels = torch.empty(H, W, dtype=torch.long) if want_labels else None
    scores = torch.empty(n_cls, H, W) if want_maps else None
    probs = torch.empty(n_cls, H, W) if want_maps else None
    need_probs = want_maps or (threshold is not None and on == "prob")
    cand = None if need_probs else _candidates(maps)
    hi = max(1, min(512, int(math.sqrt(_CHUNK / k2))))  # tiles: bounded memory, local candidates
    row_bands = _bands(H, maps.shape[1], extent[0], min(256, hi), hi)
    col_bands = _bands(W, maps.shape[2], extent[1], min(256, hi), hi)
    for (r0, r1), (c0, c1) in ((r, c) for r in row_bands for c in col_bands):
        idx = torch.arange(k2)
        if cand is not None:
            q0 = _axis(H, maps.shape[1], extent[0], r0, r1)[0]
            q1 = _axis(W, maps.shape[2], extent[1], c0, c1)[0]
            idx = cand[:, int(q0[0]):int(q0[-1]) + 1, int(q1[0]):int(q1[-1]) + 1].flatten(1).any(1).nonzero()[:, 0]
        if not want_maps and len(idx) == 1 and threshold is None:  # one possible winner: no maps
            labels[r0:r1, c0:c1] = BACKGROUND if idx[0] >= n_cls else int(idx[0])
            continue
        s = resample(maps[idx], out_hw, extent, (r0, r1), (c0, c1))
        p = (s * logit_scale).softmax(0) if need_probs else None
        if want_maps:
            scores[:, r0:r1, c0:c1], probs[:, r0:r1, c0:c1] = s[:n_cls], p[:n_cls]
        if want_labels:
            best, lab = s.max(0)
            if len(idx) < k2:
                lab = torch.take(idx, lab)
            if k2 > n_cls:
                lab[lab >= n_cls] = BACKGROUND
            if threshold is not None:  # the best class is always a candidate: `best` is exact
                lab[(best if on == "score" else p[:n_cls].amax(0)) < threshold] = BACKGROUND
            labels[r0:r1, c0:c1] = lab
    return labels, scores, probs
