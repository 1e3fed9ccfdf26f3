"""Semantic-segmentation metrics (aAcc, mIoU, mAcc, mDice, mFscore) with mmseg 0.x semantics.

Everything is computed from four per-class pixel counts (the "areas"):

* ``intersect[c]``: pixels where prediction == label == c
* ``union[c]``:     pred_area[c] + label_area[c] - intersect[c]
* ``pred[c]``:      pixels predicted as c
* ``label[c]``:     pixels labelled c

Counts are summed over the whole dataset first and only then turned into ratios (this is what mmseg
and the DenseCLIP paper report; averaging per-image IoUs would give a different number).

Typical use::

    metric = SegMetric(num_classes=150, reduce_zero_label=True, class_names=ADE20K_CLASSES)
    for pred, label in loader:          # pred: (B, H, W) class indices, label: (B, H, W) raw labels
        metric.update(pred, label)
    print(format_table(metric.compute()))

Distributed evaluation: every rank updates its own metric, then the four area vectors are summed
across ranks (``metric.all_reduce()``, or by hand with ``state()`` / ``load_state()``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

ALLOWED_METRICS = ("mIoU", "mDice", "mFscore")

__all__ = [
    "ALLOWED_METRICS",
    "SegMetric",
    "compute_metrics",
    "f_score",
    "format_table",
    "intersect_and_union",
]


def _as_index_tensor(x: Any, what: str) -> torch.Tensor:
    """Turn a numpy array / tensor / nested list of class indices into an int64 tensor.

    The result may share memory with the input; callers must never modify it in place.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        # from_numpy needs native byte order and no negative strides
        t = torch.from_numpy(np.ascontiguousarray(x).astype(x.dtype.newbyteorder("="), copy=False))
    else:
        t = torch.as_tensor(np.asarray(x))
    if t.is_floating_point() or t.is_complex():
        raise TypeError(
            f"{what} must hold integer class indices, got dtype {t.dtype}; "
            "for logits or probabilities pass scores.argmax(dim=1) (or .argmax(0) for one image)"
        )
    return t.to(torch.int64)


def _bincount(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class pixel counts of ``values``; values outside [0, num_classes-1] are not counted.

    mmseg uses ``torch.histc(min=0, max=num_classes-1)``, which drops the same values; integer
    bincount gives identical counts without float32 rounding for very large images.
    """
    in_range = (values >= 0) & (values < num_classes)
    return torch.bincount(values[in_range], minlength=num_classes)


def intersect_and_union(
    pred: ArrayLike,
    label: ArrayLike,
    num_classes: int,
    ignore_index: int | None = 255,
    label_map: Mapping[int, int] | None = None,
    reduce_zero_label: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class pixel areas for one image (or a batch: counts are simply summed over it).

    Same semantics as ``mmseg.core.evaluation.intersect_and_union`` (0.x), in this order:

    1. ``label_map`` ``{old: new}`` is applied to the label (all keys looked up in the original
       label, so ``{1: 2, 2: 3}`` does not chain 1 -> 3);
    2. ``reduce_zero_label``: 0 -> 255, then every label -= 1, then 254 -> 255 (so 0 and 255 end up
       ignored and 1..N become 0..N-1; used for ADE20K);
    3. pixels whose (transformed) label == ``ignore_index`` are dropped;
    4. prediction / label values outside [0, num_classes-1] are not counted in any histogram.

    The inputs are never modified.

    Args:
        pred: (H, W) or (B, H, W) predicted class indices, any integer dtype, numpy or torch.
        label: ground truth of the same shape, raw values (before label_map / reduce_zero_label).
        num_classes: number of classes N.
        ignore_index: label value excluded from evaluation (None: keep every pixel).
        label_map: optional ``{old_label: new_label}`` remapping of the ground truth.
        reduce_zero_label: shift labels down by one and ignore 0 (see above).

    Returns:
        ``(area_intersect, area_union, area_pred, area_label)``, each a float64 tensor of shape (N,)
        on the label's device (CPU for MPS, which has no float64).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    pred_t = _as_index_tensor(pred, "pred")
    label_t = _as_index_tensor(label, "label")
    if pred_t.shape != label_t.shape:
        raise ValueError(
            f"pred has shape {tuple(pred_t.shape)} but label has shape {tuple(label_t.shape)}; "
            "they must match pixel for pixel (resize the logits to the label size before argmax)"
        )
    pred_t = pred_t.to(label_t.device)

    if label_map:
        # Write into a copy, and compare against the original: no chaining, no caller mutation.
        mapped = label_t.clone()
        for old_id, new_id in label_map.items():
            mapped[label_t == old_id] = new_id
        label_t = mapped
    if reduce_zero_label:
        label_t = torch.where(label_t == 0, 255, label_t) - 1
        label_t = torch.where(label_t == 254, 255, label_t)

    if ignore_index is None:  # evaluate every pixel
        pred_v, label_v = pred_t.reshape(-1), label_t.reshape(-1)
    else:
        keep = label_t != ignore_index
        pred_v, label_v = pred_t[keep], label_t[keep]

    area_intersect = _bincount(pred_v[pred_v == label_v], num_classes)
    area_pred = _bincount(pred_v, num_classes)
    area_label = _bincount(label_v, num_classes)
    area_union = area_pred + area_label - area_intersect

    out_device = torch.device("cpu") if label_t.device.type == "mps" else label_t.device
    return tuple(a.to(out_device, torch.float64) for a in (area_intersect, area_union, area_pred, area_label))


def f_score(precision: torch.Tensor, recall: torch.Tensor, beta: float = 1) -> torch.Tensor:
    """F-beta score ``(1 + b^2) P R / (b^2 P + R)``; NaN where P and R are both 0 (as in mmseg)."""
    return (1 + beta**2) * (precision * recall) / ((beta**2 * precision) + recall)


def _nanmean(x: np.ndarray) -> float:
    """Mean over non-NaN entries; NaN (without a RuntimeWarning) if every entry is NaN."""
    finite = x[~np.isnan(x)]
    return float(finite.mean()) if finite.size else math.nan


def compute_metrics(
    total_intersect: ArrayLike,
    total_union: ArrayLike,
    total_pred: ArrayLike,
    total_label: ArrayLike,
    metrics: str | Sequence[str] = ("mIoU",),
    nan_to_num: float | None = None,
    beta: float = 1,
) -> dict[str, Any]:
    """Turn accumulated areas into metrics, like mmseg's ``total_area_to_metrics`` (+ the summary).

    Args:
        total_intersect, total_union, total_pred, total_label: (N,) areas summed over the dataset.
        metrics: any of ``"mIoU"`` (IoU, Acc), ``"mDice"`` (Dice, Acc), ``"mFscore"``
            (Fscore, Precision, Recall).
        nan_to_num: if given, NaN per-class values (and aAcc) are replaced by it *before* the means
            are taken, exactly as mmseg does (so absent classes then count as that value).
        beta: weight of recall in the F-score.

    Returns:
        dict with ``"aAcc"`` (float), the per-class arrays requested (float64 numpy, shape (N,),
        fractions in [0, 1] or NaN: IoU is NaN for a class with empty union, Acc/Recall for a class
        absent from the labels, Precision for a class never predicted) and their NaN-ignoring means
        under the mmseg summary names (``"mIoU"``, ``"mAcc"``, ``"mDice"``, ``"mFscore"``,
        ``"mPrecision"``, ``"mRecall"``).
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in ALLOWED_METRICS]
    if unknown:
        raise KeyError(f"metrics {unknown} are not supported; choose from {list(ALLOWED_METRICS)}")

    inter, union, pred, label = (torch.as_tensor(a, dtype=torch.float64).cpu() for a in
                                 (total_intersect, total_union, total_pred, total_label))
    # torch float division gives NaN for 0/0 silently: that NaN marks "undefined for this class"
    per_class: dict[str, torch.Tensor] = {}
    all_acc = inter.sum() / label.sum()
    for metric in metrics:
        if metric == "mIoU":
            per_class["IoU"] = inter / union
            per_class["Acc"] = inter / label
        elif metric == "mDice":
            per_class["Dice"] = 2 * inter / (pred + label)
            per_class["Acc"] = inter / label
        else:  # mFscore
            precision = inter / pred
            recall = inter / label
            per_class["Fscore"] = f_score(precision, recall, beta)
            per_class["Precision"] = precision
            per_class["Recall"] = recall

    results: dict[str, Any] = {"aAcc": float(all_acc)}
    results.update({k: v.numpy() for k, v in per_class.items()})
    if nan_to_num is not None:
        results = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in results.items()}
        results["aAcc"] = float(results["aAcc"])
    for key in list(per_class):
        results["m" + key] = _nanmean(results[key])
    return results


class SegMetric:
    """Accumulates the four per-class areas over a dataset and computes mmseg-style metrics.

    Args:
        num_classes: number of classes N.
        ignore_index, label_map, reduce_zero_label: see :func:`intersect_and_union`.
        class_names: optional N names; ``compute()`` then adds a ``"per_class"`` dict.
        metrics: metrics for ``compute()`` (``"mIoU"``, ``"mDice"``, ``"mFscore"``).
        nan_to_num, beta: see :func:`compute_metrics`.
        device: where the (4, N) float64 state lives (CPU by default; updates from other devices
            are moved here).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        label_map: Mapping[int, int] | None = None,
        reduce_zero_label: bool = False,
        class_names: Sequence[str] | None = None,
        metrics: str | Sequence[str] = ("mIoU",),
        nan_to_num: float | None = None,
        beta: float = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class_names for num_classes={num_classes}; "
                             "pass one name per class, in class-index order")
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = [m for m in metrics if m not in ALLOWED_METRICS]
        if unknown:
            raise KeyError(f"metrics {unknown} are not supported; choose from {list(ALLOWED_METRICS)}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.label_map = dict(label_map) if label_map else None
        self.reduce_zero_label = reduce_zero_label
        self.class_names = tuple(class_names) if class_names is not None else None
        self.metrics = metrics
        self.nan_to_num = nan_to_num
        self.beta = beta
        self.device = torch.device(device)
        self._state = torch.zeros(4, num_classes, dtype=torch.float64, device=self.device)

    def __repr__(self) -> str:
        return (f"SegMetric(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
                f"reduce_zero_label={self.reduce_zero_label}, pixels={int(self._state[3].sum())})")

    # ----------------------------------------------------------------- accumulation
    def update(self, pred: ArrayLike | Sequence[ArrayLike], label: ArrayLike | Sequence[ArrayLike]) -> None:
        """Add one image (H, W), a batch (B, H, W), or two equal-length lists of images.

        Lists allow images of different sizes; a batch is counted exactly like its images one by one.
        """
        if isinstance(pred, (list, tuple)) or isinstance(label, (list, tuple)):
            if not (isinstance(pred, (list, tuple)) and isinstance(label, (list, tuple))):
                raise TypeError("pass either two arrays or two lists of arrays to update(), not a mix")
            if len(pred) != len(label):
                raise ValueError(f"got {len(pred)} predictions but {len(label)} labels")
            for p, lab in zip(pred, label):
                self.update(p, lab)
            return
        areas = intersect_and_union(pred, label, self.num_classes, self.ignore_index,
                                    self.label_map, self.reduce_zero_label)
        self._state += torch.stack(areas).to(self._state.device)

    def reset(self) -> None:
        """Zero the accumulated areas."""
        self._state.zero_()

    # ----------------------------------------------------------------- state (for distributed eval)
    def state(self) -> torch.Tensor:
        """A copy of the accumulated areas: float64 (4, N), rows intersect / union / pred / label.

        Sum these across processes, e.g.::

            s = metric.state().cuda(); torch.distributed.all_reduce(s); metric.load_state(s)
        """
        return self._state.clone()

    def _check_state(self, state: ArrayLike) -> torch.Tensor:
        state = torch.as_tensor(state, dtype=torch.float64)
        if state.shape != (4, self.num_classes):
            raise ValueError(f"state must have shape (4, {self.num_classes}) "
                             f"(intersect, union, pred, label), got {tuple(state.shape)}")
        return state.to(self._state.device)

    def load_state(self, state: ArrayLike) -> None:
        """Replace the accumulated areas by ``state`` (4, N)."""
        self._state = self._check_state(state).clone()

    def add_state(self, state: ArrayLike) -> None:
        """Add areas ``state`` (4, N), e.g. from another worker."""
        self._state += self._check_state(state)

    def merge(self, other: SegMetric) -> SegMetric:
        """Add another metric's areas into this one (same num_classes); returns self."""
        if not isinstance(other, SegMetric):
            raise TypeError(f"can only merge another SegMetric, got {type(other).__name__}")
        self.add_state(other._state)
        return self

    def all_reduce(self, group: Any = None) -> SegMetric:
        """Sum the areas over all processes of ``torch.distributed`` (no-op when not initialised)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        state = self._state
        if dist.get_backend(group) == "nccl":  # NCCL only reduces CUDA tensors
            state = state.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(state, op=dist.ReduceOp.SUM, group=group)
        self._state = state.to(self.device)
        return self

    # ----------------------------------------------------------------- results
    def compute(self) -> dict[str, Any]:
        """Metrics over everything seen so far.

        Returns:
            dict with ``aAcc`` and the means (``mIoU``, ``mAcc``, ... floats, fractions in [0, 1],
            NaN classes skipped as in mmseg), per-class lists (``IoU``, ``Acc``, ...; NaN where
            undefined), ``num_pixels`` (evaluated label pixels), and if class names were given
            ``class_names`` and ``per_class``: ``{name: {"IoU": .., "Acc": ..}}``.
        """
        res = compute_metrics(*self._state.cpu(), metrics=self.metrics,
                              nan_to_num=self.nan_to_num, beta=self.beta)
        out: dict[str, Any] = {}
        per_class_keys = [k for k, v in res.items() if isinstance(v, np.ndarray)]
        for k, v in res.items():
            out[k] = v.tolist() if isinstance(v, np.ndarray) else v
        out["num_pixels"] = int(self._state[3].sum())
        if self.class_names is not None:
            out["class_names"] = list(self.class_names)
            out["per_class"] = {name: {k: out[k][i] for k in per_class_keys}
                                for i, name in enumerate(self.class_names)}
        return out


def format_table(results: Mapping[str, Any], class_names: Sequence[str] | None = None, digits: int = 2) -> str:
    """Plain-text per-class table (values in %) plus a summary line, for logs.

    Args:
        results: output of :meth:`SegMetric.compute` or :func:`compute_metrics`.
        class_names: row names; defaults to ``results["class_names"]``, else the class indices.
        digits: decimals shown.
    """
    columns = [k for k in ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall") if k in results]
    if not columns:
        raise ValueError("results hold no per-class metrics; pass the output of SegMetric.compute()")
    n = len(results[columns[0]])
    names = class_names if class_names is not None else results.get("class_names")
    names = [str(i) for i in range(n)] if names is None else [str(s) for s in names]
    if len(names) != n:
        raise ValueError(f"got {len(names)} class names for {n} classes")

    def fmt(v: float) -> str:
        return "nan" if v is None or math.isnan(v) else f"{100 * v:.{digits}f}"

    rows = [["Class", *columns]]
    rows += [[names[i], *(fmt(float(results[c][i])) for c in columns)] for i in range(n)]
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]

    def line(r: list[str]) -> str:  # class names left-aligned, numbers right-aligned
        cells = (c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
        return "| " + " | ".join(cells) + " |"

    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    table = [rule, line(rows[0]), rule, *(line(r) for r in rows[1:]), rule]
    summary_keys = [k for k in ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall") if k in results]
    table.append("  ".join(f"{k}: {fmt(float(results[k]))}" for k in summary_keys))
    return "\n".join(table)
