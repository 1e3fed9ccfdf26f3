"""The `data:` and `schedule:` sections of a detection run: COCO-format data and the mmdet epoch schedule.

    data:
      root: data/coco                  # the COCO 2017 layout: train2017/, val2017/, annotations/
      train_images: train2017
      train_ann: annotations/instances_train2017.json
    schedule: {epochs: 12, steps: [8, 11], gamma: 0.1}    # mmdet 1x
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from denseclip.config import Config
from denseclip.detection import CocoDetection, collate_detection, to_sample

from .det_synthetic import write_synthetic_coco

SECTIONS = ("model", "data", "schedule", "train")


@dataclass
class DetDataConfig(Config):
    """COCO-format data: image folders + instances jsons, relative to `root` (the COCO 2017 layout)."""

    root: str = "data/coco"
    train_images: str = "train2017"
    train_ann: str = "annotations/instances_train2017.json"
    val_images: str | None = "val2017"  # None: no evaluation
    val_ann: str | None = "annotations/instances_val2017.json"
    synthetic: int = 0  # > 0: first write a synthetic COCO-format set of this many training images to root
    synthetic_val: int = 8
    hflip_prob: float = 0.5  # the authors' RandomFlip(0.5)

    def write_synthetic(self, seed: int = 0) -> None:
        """With `synthetic` > 0: write the synthetic training (and validation) set under `root`."""
        if self.synthetic:
            write_synthetic_coco(Path(self.root), self.train_images, self.synthetic, seed=seed)
            if self.val_images:
                write_synthetic_coco(Path(self.root), self.val_images, self.synthetic_val, seed=seed)

    def val_dataset(self, with_masks: bool, class_names: tuple | None = None) -> CocoDetection | None:
        """The validation set (None without val_images / val_ann)."""
        if not (self.val_images and self.val_ann):
            return None
        root = Path(self.root)
        return CocoDetection(root / self.val_images, root / self.val_ann, with_masks=with_masks,
                             class_names=class_names)

    def train_dataset(self, with_masks: bool) -> CocoDetection:
        # flips come from the stream's per-sample RNG (resumable), not from the dataset
        root = Path(self.root)
        return CocoDetection(root / self.train_images, root / self.train_ann, train=True,
                             with_masks=with_masks, hflip_prob=0.0)


@dataclass
class ScheduleConfig(Config):
    """mmdet step schedule in epochs (1x: 12 epochs, lr x0.1 after epochs 8 and 11)."""

    epochs: int = 12
    steps: tuple[int, ...] = (8, 11)
    gamma: float = 0.1


class RawSamples(torch.utils.data.Dataset):
    """CocoDetection as the engine's StreamDataset wants it: {"image": uint8 array, "label": target}."""

    def __init__(self, ds: CocoDetection):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        rgb, target = self.ds.load(i)
        return {"image": rgb, "label": target}


class FlipTransform:
    """(image, target, rng) -> a (tensor, target) sample, flipped with probability `prob` by `rng`."""

    def __init__(self, prob: float):
        self.prob = prob

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator):
        return to_sample(image, target, flip=bool(rng.random() < self.prob))


def val_loader(ds: CocoDetection, env, workers: int, max_images: int | None = None,
               batch_size: int = 2) -> DataLoader:
    """This rank's share of the first `max_images` validation images (every world_size-th)."""
    n = len(ds) if max_images is None else min(max_images, len(ds))
    return DataLoader(Subset(ds, list(range(env.rank, n, env.world_size))), batch_size=batch_size,
                      num_workers=workers, collate_fn=collate_detection)
