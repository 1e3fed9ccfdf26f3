"""A synthetic segmentation task generated on the fly, for tests, CI and tutorials.

Each image is a scene of big coloured regions: class 0 above a random horizon, class 1 below it,
then one to three shapes of the other classes (ellipses, boxes, triangles), every class with its own
colour and a little texture and noise. Sample i is a pure function of (seed, i), so every worker, rank
and resumed run sees the same pixels. The task is easy on purpose: a tiny model learns it in a few
dozen iterations, which is what an end-to-end test needs.

    ds = SyntheticSegDataset(64, seed=0)                 # TINY_CLASSES: sky, tree, road, person, car
    write_folder_dataset("my_data", num_train=40, num_val=10)   # the same, as a folder dataset on disk
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import TINY_CLASSES

# Well-separated RGB colours; class c uses BASE_COLOURS[c % len].
BASE_COLOURS = np.array([
    (90, 160, 230), (60, 140, 60), (110, 110, 110), (220, 60, 60), (240, 200, 40), (150, 70, 200),
    (40, 200, 200), (250, 140, 40), (140, 90, 50), (250, 250, 250), (20, 20, 20), (200, 120, 180),
], dtype=np.float32)


def class_palette(num_classes: int) -> list[int]:
    """A flat 768-entry PIL palette: class c -> its synthetic colour, 255 (ignore) -> white."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for c in range(min(num_classes, 255)):
        pal[c] = BASE_COLOURS[c % len(BASE_COLOURS)]
    pal[255] = 255
    return pal.flatten().tolist()


def _shape_mask(kind: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator, h: int,
                w: int) -> np.ndarray:
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.2, 0.8) * w
    ry, rx = rng.uniform(0.18, 0.35) * h, rng.uniform(0.12, 0.3) * w
    if kind == 0:  # ellipse
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    if kind == 1:  # axis-aligned box
        return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    # triangle pointing up: inside the box and above both slanted edges
    top, bottom = cy - ry, cy + ry
    t = (yy - top) / max(bottom - top, 1e-6)
    return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= t * rx)


def make_sample(index: int, seed: int = 0, size: tuple[int, int] = (64, 96), num_classes: int = 5,
                noise: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Sample `index` of the task: ((H, W, 3) uint8 image, (H, W) int64 label in 0..num_classes-1)."""
    if num_classes < 2:
        raise ValueError(f"the synthetic task needs at least 2 classes, got {num_classes}")
    rng = np.random.default_rng([int(seed), int(index)])
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = rng.uniform(0.3, 0.7) * h + rng.uniform(-0.1, 0.1) * h * (xx / w - 0.5)
    label = np.where(yy < horizon, 0, 1).astype(np.int64)
    for _ in range(rng.integers(1, 4) if num_classes > 2 else 0):
        c = int(rng.integers(2, num_classes))
        label[_shape_mask(c % 3, yy, xx, rng, h, w)] = c
    colours = BASE_COLOURS[np.arange(num_classes) % len(BASE_COLOURS)]
    colours = colours + rng.uniform(-15, 15, size=colours.shape).astype(np.float32)  # per-image jitter
    image = colours[label]
    # per-class texture: horizontal / vertical / diagonal stripes at a low amplitude
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.stack([np.sin(yy / 2 + phase), np.sin(xx / 2 + phase), np.sin((xx + yy) / 3 + phase)])
    image += 10.0 * stripes[label % 3, yy.astype(int), xx.astype(int)][..., None]
    image += rng.normal(0, noise, size=image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


class SyntheticSegDataset(torch.utils.data.Dataset):
    """`length` synthetic samples; same interface as `SegDataset` (raw samples, class names, validate).

    Args:
        length: number of samples (index i is sample i of `make_sample`).
        seed: selects the task instance; use different seeds (or `offset`) for train and val.
        size: (H, W) of every image.
        class_names: names of the classes (default TINY_CLASSES, so the tiny presets fit).
        offset: first sample index (a validation set disjoint from the training set: offset=10**6).
    """

    ignore_index = 255
    reduce_zero_label = False

    def __init__(self, length: int = 64, seed: int = 0, size: Sequence[int] = (64, 96),
                 class_names: Sequence[str] = TINY_CLASSES, offset: int = 0):
        if length < 1:
            raise ValueError(f"length must be positive, got {length}")
        self.length, self.seed, self.offset = int(length), int(seed), offset
        self.size, self.class_names = (int(size[0]), int(size[1])), tuple(class_names)
        self.name = f"synthetic(seed={seed}, n={length})"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return (f"SyntheticSegDataset(length={self.length}, seed={self.seed}, size={self.size}, "
                f"classes={self.num_classes})")

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} samples")
        image, label = make_sample(self.offset + i, self.seed, self.size, self.num_classes)
        return {"image": image, "label": label, "name": f"synthetic_{self.offset + i:06d}"}

    def validate(self, mode: str = "full", workers: int | None = None) -> None:
        """Nothing on disk to check (kept for interface parity with SegDataset)."""


def write_folder_dataset(root: str | Path, num_train: int = 40, num_val: int = 10, seed: int = 0,
                         size: Sequence[int] = (64, 96), class_names: Sequence[str] = TINY_CLASSES,
                         image_format: str = "jpg") -> Path:
    """Write the synthetic task as a folder dataset (see `denseclip.data.folder`) and return its root.

    root/classes.txt, root/images/{train,val}/*.{jpg|png}, root/masks/{train,val}/*.png (palette PNGs).
    """
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    root = Path(root)
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(class_names) + "\n", "utf-8")
    palette = class_palette(len(class_names))
    for split, n, offset in (("train", num_train, 0), ("val", num_val, 10**6)):
        ds = SyntheticSegDataset(max(n, 1), seed, size, class_names, offset)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            s = ds[i]
            path = root / "images" / split / f"{s['name']}.{image_format}"
            Image.fromarray(s["image"]).save(path, quality=95)
            mask = Image.fromarray(s["label"].astype(np.uint8), "P")
            mask.putpalette(palette)
            mask.save(root / "masks" / split / f"{s['name']}.png")
    return root
