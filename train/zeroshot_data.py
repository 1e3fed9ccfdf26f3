"""The eight training-free benchmarks' data, as `python -m train.eval_zeroshot` reads it: a reader per layout
(PASCAL VOC 2012, PASCAL Context, COCO-Object, Cityscapes; ADE20K and COCO-Stuff are the library's own
datasets) and the class names with synonyms as each peer's released code spells them.

    VOCdevkit/VOC2012/  JPEGImages/*.jpg  SegmentationClass/*.png (palette)  ImageSets/Segmentation/val.txt
        0 = background, 1..20 objects, 255 object borders (ignored); VOC20 ignores background
        (mmseg's reduce_zero_label: 0 -> 255, k -> k-1)
    VOCdevkit/VOC2010/  JPEGImages  SegmentationClassContext/*.png  ImageSets/SegmentationContext/val.txt
        mmseg's converted masks (tools/convert_datasets/pascal_context.py): 0 = background, 1..59 the
        classes of PASCAL_CONTEXT_CLASSES; Context59 ignores background
    coco_stuff164k/  images/val2017/*.jpg  annotations/val2017/*_instanceTrainIds.png (GroupViT's / TCL's
        cvt_coco_object.py, shipped with SCLIP, NACLIP and ProxyCLIP: 0 = background, 1..80 the things);
        without them mmseg's COCO-Stuff *_labelTrainIds.png are converted on reading (things 0..79 -> 1..80,
        the rest -> 0)
    cityscapes/  leftImg8bit/val/<city>/*_leftImg8bit.png  gtFine/val/<city>/*_gtFine_labelTrainIds.png
        (0..18 in the order of CITYSCAPES_CLASSES, 255 = not counted)

`peer_class_names(peer, dataset)` gives, per class of the dataset (in its label order), the text queries
that stand for it; a class scores the max over its queries. SCLIP's `configs/cls_*.txt` (which NACLIP's
configs name too) give VOC's background 26 words and "person" / "tv monitor" synonyms and write some names
without spaces ("pottedplant", "chestofdrawers", "trafficlight"); ClearCLIP's VOC21 says "background";
ProxyCLIP's lists drop the person and tv synonyms and shorten COCO-Object's background. A dataset a peer
ships no list for falls back to SCLIP's (ClearCLIP and ProxyCLIP say their code builds on SCLIP's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from denseclip.data.base import DatasetError, SamplePaths, SegDataset, list_images, pair_by_stem, require_dir
from denseclip.vocab import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    COCO_CLASSES,
    COCO_OBJECT_CLASSES,
    COCO_STUFF_CLASSES,
    PASCAL_CONTEXT59_CLASSES,
    PASCAL_CONTEXT_CLASSES,
    PASCAL_VOC_CLASSES,
)

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


# SCLIP's background for VOC21 and COCO-Object (also ProxyCLIP's for VOC21)
BACKGROUND_WORDS = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk", "bed",
    "building", "cloud", "lamp", "door", "window", "wardrobe", "ceiling", "shelf", "curtain", "stair",
    "floor", "hill", "rail", "fence",
)
PROXYCLIP_OBJECT_BACKGROUND = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk", "bed",
    "building", "cloud", "floor", "hill", "rail",
)
PERSON = ("person", "person in shirt", "person in jeans", "person in dress", "person in sweater",
          "person in skirt", "person in jacket")
TV = ("television monitor", "tv monitor", "monitor", "television", "screen")
VOC20 = (
    "aeroplane", "bicycle", "bird", "ship", "bottle", "bus", "car", "cat", "chair", "cow", "table", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
DATASETS = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")
PEERS = ("sclip", "naclip", "clearclip", "proxyclip")


def _one(names) -> tuple[tuple[str, ...], ...]:
    return tuple((n,) if isinstance(n, str) else tuple(n) for n in names)


def _no_spaces(names) -> tuple[tuple[str, ...], ...]:
    return tuple((n.replace(" ", ""),) for n in names)


_SCLIP_VOC20 = _one(PERSON if n == "person" else TV if n == "tvmonitor" else n for n in VOC20)
_SCLIP = {
    "voc21": (BACKGROUND_WORDS, *_SCLIP_VOC20),
    "voc20": _SCLIP_VOC20,
    "context60": _one(PASCAL_CONTEXT_CLASSES),
    "context59": _one(PASCAL_CONTEXT_CLASSES[1:]),
    "coco_object": (BACKGROUND_WORDS, (*PERSON, "body"), *_one(COCO_CLASSES[1:])),
    "coco_stuff": _no_spaces(COCO_STUFF_CLASSES),
    "cityscapes": _no_spaces(CITYSCAPES_CLASSES),
    "ade20k": _no_spaces(ADE20K_CLASSES),
}
_OWN = {
    "clearclip": {"voc21": (("background",), *_one(VOC20))},
    "proxyclip": {"voc21": (BACKGROUND_WORDS, *_one(VOC20)), "voc20": _one(VOC20),
                  "coco_object": (PROXYCLIP_OBJECT_BACKGROUND, *_one(COCO_CLASSES))},
}


def peer_class_names(peer: str, dataset: str) -> tuple[tuple[str, ...], ...]:
    """Per class of `dataset` (a DATASETS key), the queries `peer` (a PEERS key) uses for it."""
    if peer not in PEERS or dataset not in DATASETS:
        raise ValueError(f"peer must be one of {PEERS} and dataset one of {DATASETS}; got {peer!r}, "
                         f"{dataset!r}")
    return _OWN.get(peer, {}).get(dataset, _SCLIP[dataset])
