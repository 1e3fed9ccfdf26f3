"""COCO-Stuff-164k (171 classes) in mmseg's converted layout.

    coco_stuff164k/
      images/train2017/000000000009.jpg ...               images/val2017/...
      annotations/train2017/000000000009_labelTrainIds.png ...  annotations/val2017/...

The `_labelTrainIds.png` files (written by mmseg's tools/convert_datasets/coco_stuff164k.py) hold
0..170 in the order of `denseclip.vocab.COCO_STUFF_CLASSES` and 255 for unlabelled pixels.
"""

from __future__ import annotations

from pathlib import Path

from ..vocab import COCO_STUFF_CLASSES
from .base import SegDataset, split_layout_samples

COCO_STUFF_LAYOUT = """  coco_stuff164k/
    images/train2017/*.jpg     annotations/train2017/*_labelTrainIds.png
    images/val2017/*.jpg       annotations/val2017/*_labelTrainIds.png
  (convert the stuffthingmaps with mmseg's tools/convert_datasets/coco_stuff164k.py)"""

_SPLITS = {"train": "train2017", "train2017": "train2017", "val": "val2017", "val2017": "val2017"}


class COCOStuffDataset(SegDataset):
    """COCO-Stuff-164k; split "train"/"train2017" or "val"/"val2017"."""

    def __init__(self, root: str | Path, split: str = "train2017"):
        root = Path(root)
        split, samples, name = split_layout_samples(root, split, _SPLITS, "COCO-Stuff", COCO_STUFF_LAYOUT,
                                                    "_labelTrainIds.png")
        super().__init__(samples, COCO_STUFF_CLASSES, ignore_index=255, reduce_zero_label=False, name=name)
        self.root, self.split = root, split
