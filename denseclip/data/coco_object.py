"""COCO-Object (background + the 80 COCO things) as the training-free benchmarks use it.

    coco_stuff164k/
      images/val2017/000000000139.jpg ...
      annotations/val2017/000000000139_instanceTrainIds.png ...   (or *_labelTrainIds.png, see below)

The `_instanceTrainIds.png` masks (GroupViT's / TCL's cvt_coco_object.py, shipped with SCLIP, NACLIP and
ProxyCLIP) hold 0 = background (every stuff class and unlabelled pixels) and 1..80 = the things. Without
them, mmseg's COCO-Stuff `_labelTrainIds.png` masks are converted on reading, to the same values:
things 0..79 -> 1..80, everything else -> 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..vocab import COCO_OBJECT_CLASSES
from .base import SegDataset, list_images, pair_by_stem, require_dir

COCO_OBJECT_LAYOUT = """  coco_stuff164k/
    images/val2017/*.jpg   annotations/val2017/*_instanceTrainIds.png (or COCO-Stuff's *_labelTrainIds.png)
  (convert with SCLIP's / NACLIP's datasets/cvt_coco_object.py, or use mmseg's COCO-Stuff 164k masks)"""

_SPLITS = {"train": "train2017", "train2017": "train2017", "val": "val2017", "val2017": "val2017"}


class COCOObjectDataset(SegDataset):
    """COCO-Object, split "val" / "val2017" or "train" / "train2017"."""

    def __init__(self, root: str | Path, split: str = "val2017"):
        if split not in _SPLITS:
            raise ValueError(f"COCO-Object split must be one of {sorted(_SPLITS)}, got {split!r}")
        root, split = Path(root), _SPLITS[split]
        images = require_dir(root / "images" / split, f"COCO-Object {split} images", COCO_OBJECT_LAYOUT)
        masks = require_dir(root / "annotations" / split, f"COCO-Object {split} masks", COCO_OBJECT_LAYOUT)
        self.from_stuff = not any(masks.glob("*_instanceTrainIds.png"))
        suffix = "_labelTrainIds.png" if self.from_stuff else "_instanceTrainIds.png"
        name = f"COCO-Object {split} ({root})"
        samples = pair_by_stem(list_images(images, (".jpg", ".jpeg", ".png")), masks, suffix, name)
        super().__init__(samples, COCO_OBJECT_CLASSES, ignore_index=255, name=name)
        self.root, self.split = root, split

    def map_label(self, raw: np.ndarray) -> np.ndarray:
        return np.where(raw < 80, raw + 1, 0) if self.from_stuff else raw
