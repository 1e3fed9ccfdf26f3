"""ADE20K (SceneParsing, 150 classes) in its released `ADEChallengeData2016` layout.

    ADEChallengeData2016/
      images/training/ADE_train_00000001.jpg ...      images/validation/ADE_val_00000001.jpg ...
      annotations/training/ADE_train_00000001.png ... annotations/validation/...

Annotations store 0 = "other" and 1..150 = classes; as in mmseg (reduce_zero_label) they become
0 -> 255 (ignored) and 1..150 -> 0..149, the class order of `denseclip.vocab.ADE20K_CLASSES`.
"""

from __future__ import annotations

from pathlib import Path

from ..vocab import ADE20K_CLASSES
from .base import SegDataset, split_layout_samples

ADE20K_LAYOUT = """  ADEChallengeData2016/
    images/training/*.jpg      annotations/training/*.png
    images/validation/*.jpg    annotations/validation/*.png
  (download ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu and unzip it)"""

_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def _resolve_root(root: str | Path) -> Path:
    root = Path(root)
    if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"  # the folder that holds the unzipped archive works too
    return root


class ADE20KDataset(SegDataset):
    """ADE20K scene parsing; split "training"/"train" or "validation"/"val"."""

    def __init__(self, root: str | Path, split: str = "training"):
        root = _resolve_root(root)
        split, samples, name = split_layout_samples(root, split, _SPLITS, "ADE20K", ADE20K_LAYOUT, ".png")
        super().__init__(samples, ADE20K_CLASSES, ignore_index=255, reduce_zero_label=True, name=name)
        self.root, self.split = root, split
