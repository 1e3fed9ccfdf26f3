"""Evaluate a segmentation model on a dataset: mIoU, mAcc, aAcc and per-class IoU (mmseg's definitions).

    results = denseclip.evaluate(model, denseclip.data.ADE20KDataset("data/ade", "validation"))
    print(results["mIoU"], denseclip.metrics.format_table(results))
"""

from __future__ import annotations

import sys
import time

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .config import TestConfig
from .inference import predict
from .metrics import SegMetric


def _identity(x):
    return x


@torch.no_grad()
def evaluate(model, dataset, test: TestConfig | None = None, *, shard: tuple[int, int] = (0, 1),
             amp_dtype: torch.dtype | None = None, max_images: int | None = None, workers: int = 0,
             progress: bool = True) -> dict:
    """Metrics of `model` on `dataset` (raw samples {"image", "label"}, as denseclip.data datasets give).

    Predictions follow `test` (default: the model's test pipeline) and are made at the label's original
    size, as mmseg does. shard=(rank, world_size): with several processes each rank takes every
    world_size-th image and the counts are summed over torch.distributed (if initialised). Returns
    SegMetric.compute() plus num_images, seconds and the test pipeline used.
    """
    test = test or model.cfg.test
    if dataset.num_classes != model.cfg.num_classes:
        raise ValueError(f"the model has {model.cfg.num_classes} classes, the dataset {dataset.num_classes}")
    rank, world_size = shard
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    indices = list(range(rank, n, world_size))
    loader = DataLoader(Subset(dataset, indices), batch_size=None, num_workers=workers, collate_fn=_identity)
    metric = SegMetric(model.cfg.num_classes, dataset.ignore_index, class_names=model.cfg.class_names)
    t0 = time.perf_counter()
    for sample in tqdm(loader, desc="eval", disable=not progress or rank != 0, dynamic_ncols=True,
                       mininterval=1.0, file=sys.stderr):
        r = predict(model, sample["image"], test, amp_dtype=amp_dtype, return_probs=False)
        metric.update(r.labels, torch.as_tensor(sample["label"]))
    metric.all_reduce()
    results = metric.compute()
    results.update(num_images=n, seconds=time.perf_counter() - t0, test=test.to_dict())
    return results
