"""Semantic-segmentation metrics (aAcc, mIoU, mAcc, per-class IoU / Acc) with mmseg 0.x semantics.

Everything is computed from four per-class pixel counts (the "areas"): intersect (prediction == label
== c), union, predicted and labelled pixels. Counts are summed over the whole dataset first and only then
turned into ratios, as mmseg and the DenseCLIP paper do (averaging per-image IoUs would differ).

    metric = SegMetric(num_classes=150, class_names=ADE20K_CLASSES)
    for pred, label in loader:          # pred: (B, H, W) class indices, label: (B, H, W)
        metric.update(pred, label)
    metric.all_reduce()                 # sums the areas over torch.distributed processes (if any)
    print(format_table(metric.compute()))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


def _as_index_tensor(x: Any, what: str) -> torch.Tensor:
    """A numpy array / tensor / nested list of class indices as an int64 tensor (never modified in place)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):  # from_numpy needs native byte order and no negative strides
        t = torch.from_numpy(np.ascontiguousarray(x).astype(x.dtype.newbyteorder("="), copy=False))
    else:
        t = torch.as_tensor(np.asarray(x))
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{what} must hold integer class indices, got dtype {t.dtype}; for logits or "
                        "probabilities pass scores.argmax(dim=1) (or .argmax(0) for one image)")
    return t.to(torch.int64)


def _bincount(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class counts; values outside [0, num_classes) are not counted (as mmseg's histc drops them)."""
    return torch.bincount(values[(values >= 0) & (values < num_classes)], minlength=num_classes)


def class_coverage(labels: Any, num_classes: int) -> np.ndarray:
    """Fraction of all pixels labelled with each class (K,); other values (ignore, background) count for no
    class."""
    t = _as_index_tensor(labels, "labels")
    return (_bincount(t.flatten(), num_classes).double() / max(t.numel(), 1)).numpy()


def intersect_and_union(pred: Any, label: Any, num_classes: int, ignore_index: int | None = 255,
                        reduce_zero_label: bool = False) -> tuple[torch.Tensor, ...]:
    """Per-class areas (intersect, union, pred, label), float64 (N,), for one image or a batch (summed).

    As mmseg's `intersect_and_union` (0.x): reduce_zero_label maps 0 -> 255 then label - 1 (254 -> 255),
    pixels labelled `ignore_index` are dropped, values outside [0, N) count in no histogram.
    The inputs are never modified.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    pred_t, label_t = _as_index_tensor(pred, "pred"), _as_index_tensor(label, "label")
    if pred_t.shape != label_t.shape:
        raise ValueError(f"pred has shape {tuple(pred_t.shape)} but label has shape {tuple(label_t.shape)}; "
                         "they must match pixel for pixel (resize logits to the label size before argmax)")
    pred_t = pred_t.to(label_t.device)
    if reduce_zero_label:
        label_t = torch.where(label_t == 0, 255, label_t) - 1
        label_t = torch.where(label_t == 254, 255, label_t)
    keep = torch.ones_like(label_t, dtype=torch.bool) if ignore_index is None else label_t != ignore_index
    pred_v, label_v = pred_t[keep], label_t[keep]
    intersect = _bincount(pred_v[pred_v == label_v], num_classes)
    area_pred, area_label = _bincount(pred_v, num_classes), _bincount(label_v, num_classes)
    areas = (intersect, area_pred + area_label - intersect, area_pred, area_label)
    device = torch.device("cpu") if label_t.device.type == "mps" else label_t.device  # MPS has no float64
    return tuple(a.to(device, torch.float64) for a in areas)


def _nanmean(x: np.ndarray) -> float:
    finite = x[~np.isnan(x)]
    return float(finite.mean()) if finite.size else math.nan


def compute_metrics(intersect: Any, union: Any, pred: Any, label: Any) -> dict[str, Any]:
    """Dataset areas -> {"aAcc", "IoU" (N,), "Acc" (N,), "mIoU", "mAcc"} as mmseg's total_area_to_metrics.

    Per-class values are fractions or NaN (IoU for a class with empty union, Acc for a class absent from
    the labels); the means skip NaN classes.
    """
    inter, union, label = (torch.as_tensor(a, dtype=torch.float64).cpu() for a in (intersect, union, label))
    iou, acc = (inter / union).numpy(), (inter / label).numpy()  # 0/0 = NaN marks "undefined for this class"
    return {"aAcc": float(inter.sum() / label.sum()), "IoU": iou, "Acc": acc, "mIoU": _nanmean(iou),
            "mAcc": _nanmean(acc)}


class SegMetric:
    """Accumulates the four per-class areas over a dataset; `compute()` gives mmseg's metrics."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255, reduce_zero_label: bool = False,
                 class_names: Sequence[str] | None = None, device: str | torch.device = "cpu") -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class_names for num_classes={num_classes}; "
                             "pass one name per class, in class-index order")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.class_names = tuple(class_names) if class_names is not None else None
        self.device = torch.device(device)
        self.areas = torch.zeros(4, num_classes, dtype=torch.float64, device=self.device)

    def update(self, pred: Any, label: Any) -> None:
        """Add one image (H, W), a batch (B, H, W), or two equal-length lists of images of any sizes."""
        if isinstance(pred, (list, tuple)) or isinstance(label, (list, tuple)):
            lists = isinstance(pred, (list, tuple)) and isinstance(label, (list, tuple))
            if not lists or len(pred) != len(label):
                raise ValueError("pass two arrays, or two lists of arrays of the same length, to update()")
            for p, lab in zip(pred, label):
                self.update(p, lab)
            return
        areas = intersect_and_union(pred, label, self.num_classes, self.ignore_index, self.reduce_zero_label)
        self.areas += torch.stack(areas).to(self.areas.device)

    def reset(self) -> None:
        self.areas.zero_()

    def all_reduce(self, group: Any = None) -> SegMetric:
        """Sum the areas over all processes of torch.distributed (a no-op when it is not initialised)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        areas = self.areas
        if dist.get_backend(group) == "nccl":  # NCCL only reduces CUDA tensors
            areas = areas.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(areas, op=dist.ReduceOp.SUM, group=group)
        self.areas = areas.to(self.device)
        return self

    def compute(self) -> dict[str, Any]:
        """{"aAcc", "mIoU", "mAcc" (fractions), "IoU", "Acc" (per-class lists, NaN where undefined),
        "num_pixels", and with class names "class_names" and "per_class": {name: {"IoU", "Acc"}}}."""
        res = compute_metrics(*self.areas.cpu())
        out = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in res.items()}
        out["num_pixels"] = int(self.areas[3].sum())
        if self.class_names is not None:
            out["class_names"] = list(self.class_names)
            out["per_class"] = {n: {"IoU": out["IoU"][i], "Acc": out["Acc"][i]}
                                for i, n in enumerate(self.class_names)}
        return out


def format_table(results: Mapping[str, Any], class_names: Sequence[str] | None = None,
                 digits: int = 2) -> str:
    """Plain-text per-class table (values in %) plus a summary line, for logs."""
    if "IoU" not in results:
        raise ValueError("results hold no per-class metrics; pass the output of SegMetric.compute()")
    n = len(results["IoU"])
    names = class_names if class_names is not None else results.get("class_names")
    names = [str(i) for i in range(n)] if names is None else [str(s) for s in names]
    if len(names) != n:
        raise ValueError(f"got {len(names)} class names for {n} classes")

    def fmt(v: float) -> str:
        return "nan" if v is None or math.isnan(v) else f"{100 * v:.{digits}f}"

    rows = [["Class", "IoU", "Acc"]]
    rows += [[names[i], fmt(float(results["IoU"][i])), fmt(float(results["Acc"][i]))] for i in range(n)]
    widths = [max(len(r[j]) for r in rows) for j in range(3)]

    def line(r: list[str]) -> str:  # class names left-aligned, numbers right-aligned
        cells = (c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
        return "| " + " | ".join(cells) + " |"

    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    summary = "  ".join(f"{k}: {fmt(float(results[k]))}" for k in ("aAcc", "mIoU", "mAcc") if k in results)
    return "\n".join([rule, line(rows[0]), rule, *(line(r) for r in rows[1:]), rule, summary])
