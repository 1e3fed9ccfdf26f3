"""COCO-format detection / instance-segmentation data (pycocotools): an image folder + an instances json.

    ds = CocoDetection("data/coco/train2017", "data/coco/annotations/instances_train2017.json",
                       train=True, with_masks=True)
    image, target = ds[0]     # image (3, H, W) float in [0, 1]; target: boxes (N, 4) xyxy, labels (N,)
                              # in 1..K, masks (N, H, W) uint8 (with_masks), image_id, orig_size (H, W)
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_detection)

Categories are ordered by id and numbered 1..K (0 is torchvision's background); `cat_ids[label - 1]`
maps back to the json's ids. Resizing and normalisation are the detector's job (torchvision's transform).
As mmdet's CocoDataset in training: crowd boxes and boxes under 1 pixel are dropped, images without a
usable box are skipped, and images are flipped horizontally with probability 0.5.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_convert

from ..data.base import DatasetError
from ..data.images import ImageHeader, load_image, read_header


def _quiet_coco(ann_file: str | Path):
    from pycocotools.coco import COCO

    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        try:
            return COCO(str(path))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a COCO instances json ({type(e).__name__}: {e})") from e


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format dataset for torchvision detectors.

    image_dir: folder of the images (the json's `file_name`s are relative to it); ann_file: instances json.
    train: drop crowd / tiny boxes, skip images without boxes, random horizontal flip (hflip_prob).
    with_masks: add `masks` (N, H, W) uint8 decoded from polygons or RLE (Mask R-CNN).
    class_names: if given, must match the json's category names (in id order); catches a model/dataset mix-up.
    """

    def __init__(self, image_dir: str | Path, ann_file: str | Path, train: bool = False,
                 with_masks: bool = False, hflip_prob: float | None = None,
                 class_names: Sequence[str] | None = None):
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        self.ann_file = Path(ann_file)
        self.coco = _quiet_coco(ann_file)
        self.train, self.with_masks = train, with_masks
        self.hflip_prob = (0.5 if train else 0.0) if hflip_prob is None else hflip_prob
        self.cat_ids = tuple(sorted(self.coco.getCatIds()))
        if not self.cat_ids:
            raise ValueError(f"{self.ann_file} defines no categories")
        self.class_names = tuple(self.coco.cats[c]["name"] for c in self.cat_ids)
        if class_names is not None and tuple(class_names) != self.class_names:
            diff = [(a, b) for a, b in zip(class_names, self.class_names) if a != b][:5]
            raise ValueError(f"the model's {len(class_names)} class names differ from the "
                             f"{len(self.class_names)} categories of {self.ann_file}: first differences "
                             f"{diff}; build the model with class_names=dataset.class_names")
        self.label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        ids = sorted(self.coco.imgs)
        if train:
            ids = [i for i in ids if any(self._usable(a) for a in self.coco.imgToAnns.get(i, []))]
        if not ids:
            raise ValueError(f"{self.ann_file} has no {'annotated ' if train else ''}images")
        self.ids = ids

    def validate(self, max_shown: int = 20, workers: int | None = None) -> None:
        """Check every image of the json before training, from file headers only (no decoding): it exists,
        reads, and has the json's width x height as loading gives it (as stored, or turned by its EXIF
        orientation); every annotation names one of the categories. One DatasetError lists every problem."""
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            problems = [p for r in pool.map(self._problems, self.ids, chunksize=64) for p in r]
        if problems:
            where = f"{self.ann_file} ({len(self.ids)} images in {self.image_dir})"
            raise DatasetError(problems, where, max_shown)

    def _problems(self, image_id: int) -> list[str]:
        info = self.coco.imgs[image_id]
        anns = self.coco.imgToAnns.get(image_id, [])
        problems = [self._unknown_category(a, info) for a in anns if a["category_id"] not in self.label_of]
        try:
            header = read_header(self.image_dir / info["file_name"])
        except (OSError, ValueError) as e:
            return [f"{e} (listed in {self.ann_file})", *problems]
        if (int(info["height"]), int(info["width"])) not in (header.stored_hw, (header.height, header.width)):
            problems.append(self._wrong_size(info, header))
        return problems

    def _wrong_size(self, info: dict, header: ImageHeader) -> str:
        (h, w), turned = header.stored_hw, ""
        if header.orientation != 1 and (h, w) != (header.height, header.width):
            turned = f" (stored; EXIF orientation {header.orientation} turns it to {w}x{h})"
        return (f"image {self.image_dir / info['file_name']} is {h}x{w} (H x W){turned} but "
                f"{self.ann_file} says {info['height']}x{info['width']}: the image and its annotations do "
                "not belong together: use the image file the annotations were made on (not a resized or "
                "rotated copy)")

    def _unknown_category(self, ann: dict, info: dict) -> str:
        return (f"annotation {ann.get('id')} of image {info['file_name']} in {self.ann_file} has category_id "
                f"{ann['category_id']}, which is not one of its categories {sorted(self.label_of)}: fix the "
                "annotation or add the category (validate() lists every such annotation)")

    @staticmethod
    def _usable(ann: dict) -> bool:
        x, y, w, h = ann["bbox"]
        return not ann.get("iscrowd", 0) and w >= 1 and h >= 1

    def __len__(self) -> int:
        return len(self.ids)

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) from the json, without decoding the image (aspect-ratio grouping, evaluation)."""
        info = self.coco.imgs[self.ids[index]]
        return int(info["height"]), int(info["width"])

    def load_image(self, image_id: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB in the json's width x height (EXIF rotation applied only if that matches)."""
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {info['file_name']} of {self.ann_file} not found in "
                                    f"{self.image_dir}")
        header, size = read_header(path), (int(info["height"]), int(info["width"]))
        if size not in (header.stored_hw, (header.height, header.width)):
            raise ValueError(self._wrong_size(info, header))
        return load_image(path, exif=size != header.stored_hw)

    def load(self, index: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """Sample `index` unaugmented: ((H, W, 3) uint8 RGB, target with boxes xyxy, labels 1..K(, masks))."""
        image_id = self.ids[index]
        rgb = self.load_image(image_id)
        h, w = rgb.shape[:2]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if self._usable(a)]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = box_convert(xywh, "xywh", "xyxy")
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        anns = [a for a, k in zip(anns, keep.tolist()) if k]
        unknown = [a for a in anns if a["category_id"] not in self.label_of]
        if unknown:  # a dataset used without validate() still stops here, naming the annotation
            raise ValueError(self._unknown_category(unknown[0], self.coco.imgs[image_id]))
        target = {"boxes": boxes[keep],
                  "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
                  "image_id": torch.tensor(image_id), "orig_size": torch.tensor([h, w])}
        if self.with_masks:
            masks = [self.coco.annToMask(a) for a in anns]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else \
                torch.zeros(0, h, w, dtype=torch.uint8)
        return rgb, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rgb, target = self.load(index)
        flip = self.hflip_prob > 0 and torch.rand(()).item() < self.hflip_prob
        return to_sample(rgb, target, flip)


def to_sample(rgb: np.ndarray, target: dict[str, torch.Tensor], flip: bool = False):
    """(H, W, 3) uint8 + target -> ((3, H, W) float in [0, 1], target), mirrored if `flip`."""
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
    return hflip(image, target) if flip else (image, target)


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Mirror an image (3, H, W) and its boxes (x -> W - x) and masks."""
    w = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


def collate_detection(batch):
    """[(image, target), ...] -> (list of images, list of targets): torchvision detectors take lists."""
    images, targets = zip(*batch)
    return list(images), list(targets)
