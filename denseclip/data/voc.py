"""PASCAL VOC 2012 segmentation (21 classes with background, or the 20 objects) in its released layout.

    VOCdevkit/VOC2012/
      JPEGImages/2007_000033.jpg ...          SegmentationClass/2007_000033.png ... (palette PNGs)
      ImageSets/Segmentation/train.txt, val.txt

Masks hold 0 = background, 1..20 = objects and 255 = object borders (ignored). VOC20 (the training-free
benchmarks' "VOC without background", mmseg-style reduce_zero_label) ignores background: 0 -> 255,
k -> k-1.
"""

from __future__ import annotations

from pathlib import Path

from ..vocab import PASCAL_VOC_CLASSES
from .base import DatasetError, SamplePaths, SegDataset, require_dir

VOC_LAYOUT = """  VOCdevkit/VOC2012/
    JPEGImages/*.jpg   SegmentationClass/*.png   ImageSets/Segmentation/{train,val}.txt
  (download VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)"""


def list_file_samples(root: Path, list_file: str, masks: str, title: str, layout: str) -> list[SamplePaths]:
    """The split-list layout of VOC and PASCAL Context: one image id per line of `root/list_file`, the
    image `JPEGImages/<id>.jpg`, the mask `<masks>/<id>.png`. Every missing file is listed in one error."""
    root = require_dir(root, f"{title} root", layout)
    ids_file = root / list_file
    if not ids_file.is_file():
        raise FileNotFoundError(f"{title} split list not found: {ids_file}\nexpected layout:\n{layout}")
    ids = [line.strip() for line in ids_file.read_text("utf-8").splitlines() if line.strip()]
    samples = [SamplePaths(root / "JPEGImages" / f"{i}.jpg", root / masks / f"{i}.png") for i in ids]
    missing = [f"missing {p}" for s in samples for p in (s.image, s.label) if not p.is_file()]
    if missing:
        raise DatasetError(missing, f"{title} ({ids_file})")
    return samples


def resolve_devkit(root: str | Path, year: str) -> Path:
    root = Path(root)
    for sub in (f"VOCdevkit/VOC{year}", f"VOC{year}"):  # the folder above the devkit works too
        if not (root / "JPEGImages").is_dir() and (root / sub / "JPEGImages").is_dir():
            return root / sub
    return root


class PascalVOCDataset(SegDataset):
    """VOC 2012 segmentation, split "train" or "val"; background=False gives VOC20 (background ignored)."""

    def __init__(self, root: str | Path, split: str = "val", background: bool = True):
        root = resolve_devkit(root, "2012")
        title = "PASCAL VOC" if background else "PASCAL VOC20"
        samples = list_file_samples(root, f"ImageSets/Segmentation/{split}.txt", "SegmentationClass", title,
                                    VOC_LAYOUT)
        classes = PASCAL_VOC_CLASSES if background else PASCAL_VOC_CLASSES[1:]
        super().__init__(samples, classes, ignore_index=255, reduce_zero_label=not background,
                         name=f"{title} {split} ({root})")
        self.root, self.split = root, split
