"""A synthetic COCO-format detection dataset on disk, for tests, CI and the tiny training configs.

Each image shows one to three coloured shapes on a noisy grey background; the category decides the colour
and the shape ("red box", "green ellipse", "blue box"), each shape sits in its own vertical slot so shapes do
not overlap, and the instance masks are polygons (some stored as RLE, to exercise both decoders). Category ids
are deliberately not 1..K (3, 7, 11), as in COCO. Image i is a pure function of (seed, split, i).

    image_dir, ann_file = write_synthetic_coco("data/synth", "train", num_images=32)
    ds = CocoDetection(image_dir, ann_file, train=True, with_masks=True)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from denseclip.config import TINY_DET_CLASSES

CATEGORIES = (  # (id, name, RGB colour, shape)
    (3, TINY_DET_CLASSES[0], (220, 40, 40), "box"),
    (7, TINY_DET_CLASSES[1], (40, 190, 60), "ellipse"),
    (11, TINY_DET_CLASSES[2], (40, 70, 220), "box"),
)


def _polygon(shape: str, cx: float, cy: float, rx: float, ry: float) -> list[float]:
    if shape == "box":
        pts = [(cx - rx, cy - ry), (cx + rx, cy - ry), (cx + rx, cy + ry), (cx - rx, cy + ry)]
    else:
        angles = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        pts = [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]
    return [round(float(v), 2) for p in pts for v in p]


def make_synthetic_image(index: int, seed: int = 0, split: str = "train", size: tuple[int, int] = (96, 128)):
    """Image `index`: ((H, W, 3) uint8, [annotation dicts without ids]) with polygon segmentations."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng([int(seed), sum(map(ord, split)), int(index)])
    h, w = size
    base = rng.uniform(110, 150)
    img = Image.fromarray(np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    n = int(rng.integers(1, 4))
    slot = w / n
    anns = []
    for j in range(n):
        cat_id, _, colour, shape = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        rx = rng.uniform(0.25, 0.42) * min(slot, 0.8 * h)
        ry = rng.uniform(0.18, 0.38) * h
        cx = slot * (j + 0.5) + rng.uniform(-0.1, 0.1) * slot
        cy = rng.uniform(ry + 2, h - ry - 2)
        poly = _polygon(shape, cx, cy, rx, ry)
        fill = tuple(int(c + rng.integers(-15, 16)) for c in colour)
        draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=fill)
        rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
        x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
        seg = [poly]
        if (index + j) % 3 == 2:  # every third object as compressed RLE
            seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
        anns.append({"category_id": cat_id, "bbox": [x, y, bw, bh], "area": float(mask_utils.area(rle)),
                     "segmentation": seg, "iscrowd": 0})
    return np.asarray(img), anns


def write_synthetic_coco(root: str | Path, split: str = "train", num_images: int = 16, seed: int = 0,
                         size: tuple[int, int] = (96, 128)) -> tuple[Path, Path]:
    """Write `root/{split}/*.png` and `root/annotations/instances_{split}.json` (the COCO 2017 layout).

    Returns (image folder, annotation file). Deterministic for a given (seed, split, num_images, size).
    """
    root = Path(root)
    image_dir, ann_dir = root / split, root / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        rgb, anns = make_synthetic_image(i, seed, split, size)
        name = f"{i:06d}.png"
        Image.fromarray(rgb).save(image_dir / name)
        image_id = i + 1
        images.append({"id": image_id, "file_name": name, "height": size[0], "width": size[1]})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **a})
    data = {"info": {"description": f"denseclip synthetic detection data, split {split}, seed {seed}"},
            "images": images, "annotations": annotations,
            "categories": [{"id": c, "name": n, "supercategory": "shape"} for c, n, _, _ in CATEGORIES]}
    ann_file = ann_dir / f"instances_{split}.json"
    ann_file.write_text(json.dumps(data), "utf-8")
    return image_dir, ann_file
