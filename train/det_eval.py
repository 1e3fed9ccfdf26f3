"""COCO evaluation of a detector with pycocotools' COCOeval: box AP, and mask AP for Mask R-CNN.

    metrics = evaluate_detector(model, loader, dataset, out_json="run/metrics.json")
    metrics["bbox_AP"], metrics["segm_AP"]          # fractions in [0, 1] (the paper reports x100)

A metric COCO cannot compute is NaN, not 0: COCOeval's -1 means "no ground-truth objects of this size"
(APs / APm / APl when the evaluated images hold no small, medium or large objects), which is an absent
number, not a zero score; the JSON file writes it as null, as every JSON file of a run does.

Under torchrun every rank runs its share of the loader (a DistributedSampler); the results are gathered,
de-duplicated by image id (the sampler pads with repeats) and scored on rank 0, which returns the metrics and
writes the JSON; other ranks return {}.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torchvision.ops import box_convert
from tqdm.auto import tqdm

from denseclip.checkpoints import write_json

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
AREA_RANGES = {"AP": (0, 1e10), "AP50": (0, 1e10), "AP75": (0, 1e10), "APs": (0, 32 ** 2),  # COCOeval's
               "APm": (32 ** 2, 96 ** 2), "APl": (96 ** 2, 1e10)}


def detections_to_coco(detections: Sequence[dict], image_ids: Sequence[int], cat_ids: Sequence[int],
                       with_masks: bool, mask_threshold: float = 0.5) -> list[dict]:
    """torchvision detections (boxes xyxy at the original image size, labels 1..K, masks (N, 1, H, W)) ->
    COCO result dicts ({"image_id", "category_id", "bbox" xywh, "score"(, "segmentation" RLE)}); a mask
    pixel counts where its probability is >= mask_threshold (mmdetection's mask_thr_binary)."""
    from pycocotools import mask as mask_utils

    out = []
    for det, image_id in zip(detections, image_ids):
        boxes = det["boxes"].detach().float().cpu()
        if boxes.numel() == 0:
            continue
        xywh = box_convert(boxes, "xyxy", "xywh").tolist()
        scores, labels = det["scores"].tolist(), det["labels"].tolist()
        rles = None
        if with_masks:
            masks = (det["masks"][:, 0] >= mask_threshold).cpu().numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        for j, (box, score, label) in enumerate(zip(xywh, scores, labels)):
            r = {"image_id": int(image_id), "category_id": int(cat_ids[label - 1]),
                 "bbox": [round(v, 3) for v in box], "score": float(score)}
            if rles is not None:
                r["segmentation"] = {"size": rles[j]["size"], "counts": rles[j]["counts"].decode("ascii")}
            out.append(r)
    return out


def _has_ground_truth(coco_gt, image_ids: list[int], area: tuple[float, float]) -> bool:
    """Whether COCOeval has a ground-truth object to score in this area range (crowds are ignored)."""
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image_ids))
    return any(not a.get("iscrowd", 0) and area[0] <= a["area"] <= area[1] for a in anns)


def coco_eval(coco_gt, results: list[dict], iou_type: str, image_ids: Iterable[int]) -> tuple[dict, str]:
    """COCOeval over `image_ids` -> ({"AP", "AP50", ..., "APl"} in [0, 1], NaN where there is no ground
    truth to score; the printed summary table)."""
    from pycocotools.cocoeval import COCOeval

    image_ids = sorted(set(int(i) for i in image_ids))
    if not results:  # pycocotools cannot load an empty result list; nothing detected scores 0
        stats = {k: 0.0 if _has_ground_truth(coco_gt, image_ids, AREA_RANGES[k]) else math.nan
                 for k in METRIC_NAMES}
        return stats, f"{iou_type}: no detections, every AP with ground truth is 0"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: float(v) if v >= 0 else math.nan for name, v in zip(METRIC_NAMES, ev.stats[:6])}
    table = "\n".join(line for line in buf.getvalue().splitlines() if line.lstrip().startswith("Average"))
    return stats, table


@torch.no_grad()
def predict_dataset(model: torch.nn.Module, loader: Iterable, cat_ids: Sequence[int], with_masks: bool,
                    device: str | torch.device = "cpu", progress: bool = False) -> tuple[list[dict], list]:
    """Run the detector over a loader of (images, targets with image_id) -> (COCO results, image ids)."""
    was_training = model.training
    model.eval()
    results, seen = [], []
    try:
        for images, targets in tqdm(loader, desc="eval", dynamic_ncols=True, disable=not progress):
            ids = [int(t["image_id"]) for t in targets]
            dets = model([im.to(device, non_blocking=True) for im in images])
            results += detections_to_coco(dets, ids, cat_ids, with_masks)
            seen += ids
    finally:
        model.train(was_training)
    return results, seen


def _gather(results: list[dict], seen: list[int]) -> tuple[list[dict], list[int]]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return results, seen
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (results, seen))
    merged, ids, owner = [], [], {}
    for rank, (res, ids_r) in enumerate(parts):  # the first rank to see an image owns its results
        for i in ids_r:
            owner.setdefault(i, rank)
        ids += ids_r
        merged += [r for r in res if owner[r["image_id"]] == rank]
    return merged, ids


def evaluate_detector(model: torch.nn.Module, loader: Iterable, dataset, device: str | torch.device = "cpu",
                      out_json: str | Path | None = None, progress: bool = False,
                      extra: dict | None = None) -> dict:
    """COCOeval box AP (and mask AP when the dataset has masks) of `model` over `loader`.

    dataset: the CocoDetection the loader reads (its `coco`, `cat_ids`, `with_masks`). Returns
    {"bbox_AP", "bbox_AP50", ..., "segm_AP", ..., "num_images", "num_detections"} on rank 0 and writes it
    (plus `extra`) to `out_json`; the COCO-format detections go next to it as `<stem>_detections.json`.
    """
    with_masks = bool(getattr(dataset, "with_masks", False))
    results, seen = predict_dataset(model, loader, dataset.cat_ids, with_masks, device, progress)
    results, seen = _gather(results, seen)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return {}
    metrics: dict = {}
    summaries = []
    for iou_type in ("bbox", "segm") if with_masks else ("bbox",):
        stats, summary = coco_eval(dataset.coco, results, iou_type, seen)
        metrics.update({f"{iou_type}_{k}": v for k, v in stats.items()})
        summaries.append(f"{iou_type}\n{summary}")
    metrics["num_images"] = len(set(seen))
    metrics["num_detections"] = len(results)
    metrics["summary"] = "\n".join(summaries)
    if out_json is not None:
        out_json = Path(out_json)
        write_json(out_json, {**(extra or {}), **metrics})
        out_json.with_name(out_json.stem + "_detections.json").write_text(json.dumps(results), "utf-8")
    return metrics
