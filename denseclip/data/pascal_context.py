"""PASCAL Context (60 classes with background, or 59) in mmseg's converted layout.

    VOCdevkit/VOC2010/
      JPEGImages/2008_000002.jpg ...     SegmentationClassContext/2008_000002.png ...
      ImageSets/SegmentationContext/train.txt, val.txt

The masks (written by mmseg's tools/convert_datasets/pascal_context.py from trainval_merged.json) hold
0 = background and 1..59 = the classes of `denseclip.vocab.PASCAL_CONTEXT_CLASSES`. Context59 ignores
background (reduce_zero_label: 0 -> 255, k -> k-1).
"""

from __future__ import annotations

from pathlib import Path

from ..vocab import PASCAL_CONTEXT59_CLASSES, PASCAL_CONTEXT_CLASSES
from .base import SegDataset
from .voc import list_file_samples, resolve_devkit

CONTEXT_LAYOUT = """  VOCdevkit/VOC2010/
    JPEGImages/*.jpg   SegmentationClassContext/*.png   ImageSets/SegmentationContext/{train,val}.txt
  (VOC2010 images and trainval_merged.json, converted by mmseg's tools/convert_datasets/pascal_context.py)"""


class PascalContextDataset(SegDataset):
    """PASCAL Context, split "train" or "val"; background=False gives Context59 (background ignored)."""

    def __init__(self, root: str | Path, split: str = "val", background: bool = True):
        root = resolve_devkit(root, "2010")
        title = "PASCAL Context" if background else "PASCAL Context59"
        samples = list_file_samples(root, f"ImageSets/SegmentationContext/{split}.txt",
                                    "SegmentationClassContext", title, CONTEXT_LAYOUT)
        classes = PASCAL_CONTEXT_CLASSES if background else PASCAL_CONTEXT59_CLASSES
        super().__init__(samples, classes, ignore_index=255, reduce_zero_label=not background,
                         name=f"{title} {split} ({root})")
        self.root, self.split = root, split
