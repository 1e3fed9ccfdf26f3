"""Cityscapes (19 evaluation classes) in its released layout with mmseg's train-id masks.

    cityscapes/
      leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png ...
      gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png ...

The `_labelTrainIds.png` masks (written by cityscapesscripts' createTrainIdLabelImgs or mmseg's
tools/convert_datasets/cityscapes.py) hold 0..18 in the order of `denseclip.vocab.CITYSCAPES_CLASSES`
and 255 for the pixels that do not count.
"""

from __future__ import annotations

from pathlib import Path

from ..vocab import CITYSCAPES_CLASSES
from .base import DatasetError, SamplePaths, SegDataset, require_dir

CITYSCAPES_LAYOUT = """  cityscapes/
    leftImg8bit/{train,val}/<city>/*_leftImg8bit.png
    gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png
  (leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com; the train-id
   masks from cityscapesscripts' createTrainIdLabelImgs or mmseg's tools/convert_datasets/cityscapes.py)"""

IMAGE_SUFFIX, MASK_SUFFIX = "_leftImg8bit.png", "_gtFine_labelTrainIds.png"


class CityscapesDataset(SegDataset):
    """Cityscapes fine annotations, split "train" or "val" (every city folder in it)."""

    def __init__(self, root: str | Path, split: str = "val"):
        root = Path(root)
        images = require_dir(root / "leftImg8bit" / split, f"Cityscapes {split} images", CITYSCAPES_LAYOUT)
        masks = require_dir(root / "gtFine" / split, f"Cityscapes {split} masks", CITYSCAPES_LAYOUT)
        samples, missing = [], []
        for img in sorted(images.glob(f"*/*{IMAGE_SUFFIX}")):
            mask = masks / img.parent.name / img.name.replace(IMAGE_SUFFIX, MASK_SUFFIX)
            (samples.append(SamplePaths(img, mask)) if mask.is_file() else
             missing.append(f"image without its train-id mask: {img} (expected {mask})"))
        if missing:
            raise DatasetError(missing, f"Cityscapes {split} ({root})")
        super().__init__(samples, CITYSCAPES_CLASSES, ignore_index=255, name=f"Cityscapes {split} ({root})")
        self.root, self.split = root, split
