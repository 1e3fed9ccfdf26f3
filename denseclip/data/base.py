"""Segmentation datasets on disk: image/label pairs, label decoding, and a `validate()` pass.

A dataset is a list of (image file, label file) pairs plus class names. `dataset[i]` gives the raw
sample {"image": (H, W, 3) uint8 RGB, "label": (H, W) int64, "name": str}; labels are already in
training form (0..K-1, `ignore_index` for pixels that do not count). Augmentation is applied by the
training pipeline (`denseclip.data.seg_transforms`), not here.

    ds = ADE20KDataset("data/ade/ADEChallengeData2016", split="training")
    ds.validate()              # every problem, each naming its file, before any training starts
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .transforms import load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VALIDATE_MODES = ("full", "fast", "none")


class DatasetError(ValueError):
    """A dataset on disk is unusable; `problems` lists every issue found, each naming its file."""

    def __init__(self, problems: Sequence[str], what: str = "dataset", max_shown: int = 20):
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:max_shown])
        more = f"\n  ... and {len(self.problems) - max_shown} more" if len(self.problems) > max_shown else ""
        super().__init__(f"{what}: {len(self.problems)} problem(s) found:\n  {shown}{more}")


@dataclass(frozen=True)
class SamplePaths:
    image: Path
    label: Path


def require_dir(path: Path, what: str, layout: str) -> Path:
    """The folder, or a FileNotFoundError that names it and shows the expected layout."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}\nexpected layout:\n{layout}")
    return path


def list_images(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly in `folder`, sorted by name (hidden files skipped)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."))


def pair_by_stem(images: Sequence[Path], label_dir: Path, label_suffix: str = ".png",
                 what: str = "dataset") -> list[SamplePaths]:
    """Match each image with `label_dir / (image stem + label_suffix)`; a missing label is an error
    (listed with every other one), so a half-copied dataset is caught before training."""
    pairs, missing = [], []
    for img in images:
        label = Path(label_dir) / f"{img.stem}{label_suffix}"
        if label.is_file():
            pairs.append(SamplePaths(img, label))
        else:
            missing.append(f"image without its mask: {img} (expected {label})")
    if missing:
        raise DatasetError(missing, what)
    return pairs


def split_layout_samples(root: Path, split: str, splits: dict[str, str], title: str, layout: str,
                         label_suffix: str) -> tuple[str, list[SamplePaths], str]:
    """The `images/<split>/` + `annotations/<split>/` layout shared by ADE20K and COCO-Stuff:
    (canonical split, image/label pairs, display name), with errors that show the expected layout."""
    if split not in splits:
        raise ValueError(f"{title} split must be one of {sorted(splits)}, got {split!r}")
    split = splits[split]
    require_dir(root, f"{title} root", layout)
    img_dir = require_dir(root / "images" / split, f"{title} {split} images", layout)
    ann_dir = require_dir(root / "annotations" / split, f"{title} {split} annotations", layout)
    name = f"{title} {split} ({root})"
    return split, pair_by_stem(list_images(img_dir, (".jpg", ".jpeg", ".png")), ann_dir, label_suffix, name), name


def read_label(path: str | Path) -> np.ndarray:
    """A label PNG -> (H, W) int64 of raw values.

    Palette ("P") PNGs give their palette *indices* (the palette is only for display, as in VOC);
    single-channel 8/16-bit PNGs give their values; RGB files are accepted only when R == G == B.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "L", "1", "I;16", "I;16B", "I;16L", "I;16N", "I"):
                arr = np.asarray(img)
            elif mode in ("RGB", "RGBA", "LA"):
                arr = np.asarray(img)
                chans = arr[..., :3] if mode != "LA" else arr[..., :1]
                if not (chans == chans[..., :1]).all():
                    raise ValueError(f"mask {path} is a colour ({mode}) image; masks must hold class indices: "
                                     "save it as a palette PNG or a single-channel (L) PNG of class ids")
                arr = chans[..., 0]
            else:
                raise ValueError(f"mask {path} has unsupported image mode {mode!r}; use a palette or "
                                 "single-channel PNG of class ids")
    except FileNotFoundError:
        raise FileNotFoundError(f"mask file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"mask file is unreadable (corrupt, truncated or not an image): {path} ({e})") from e
    return arr.astype(np.int64)


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's reduce_zero_label: 0 -> ignore (255), every other value minus one (ADE20K)."""
    out = label.astype(np.int64) - 1
    out[label == 0] = 255
    out[out == 254] = 255  # a raw 255 stays ignore
    return out


def _header_size(path: Path, what: str) -> tuple[int, int]:
    """(H, W) from the file header only; errors name the file."""
    if not path.is_file():
        raise ValueError(f"{what} file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} file is empty (0 bytes): {path}")
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{what} file is unreadable (not an image or corrupt header): {path} ({e})") from e
    return h, w


class SegDataset(torch.utils.data.Dataset):
    """Image/label pairs -> raw samples; see the module docstring.

    Args:
        samples: the (image, label) file pairs.
        class_names: one name per class index.
        ignore_index: label value that does not count (loss and metric).
        reduce_zero_label: labels are stored 1..K with 0 = "other" (ADE20K): shift them down, 0 -> ignore.
        name: shown in errors and logs.
    """

    def __init__(self, samples: Sequence[SamplePaths], class_names: Sequence[str], ignore_index: int = 255,
                 reduce_zero_label: bool = False, name: str = "dataset"):
        self.samples = list(samples)
        self.class_names = tuple(class_names)
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.name = name
        if not self.samples:
            raise DatasetError([f"no images found for {name}"], name)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, images={len(self)}, classes={self.num_classes})"

    def load_image(self, i: int) -> np.ndarray:
        return load_image(self.samples[i].image)

    def load_label(self, i: int) -> np.ndarray:
        label = read_label(self.samples[i].label)
        return reduce_zero_label(label) if self.reduce_zero_label else label

    def __getitem__(self, i: int) -> dict:
        image, label = self.load_image(i), self.load_label(i)
        if image.shape[:2] != label.shape:
            raise ValueError(f"image {self.samples[i].image} is {image.shape[0]}x{image.shape[1]} but its mask "
                             f"{self.samples[i].label} is {label.shape[0]}x{label.shape[1]} (H x W)")
        return {"image": image, "label": label, "name": self.samples[i].image.stem}

    # ------------------------------------------------------------------ validation
    def check_sample(self, i: int, mode: str = "full") -> list[str]:
        """Problems of one sample (empty when fine). fast: headers and sizes; full: decode, label values."""
        s = self.samples[i]
        problems = []
        try:
            hi = _header_size(s.image, "image")
            hl = _header_size(s.label, "mask")
        except ValueError as e:
            return [str(e)]
        if hi != hl:
            return [f"image {s.image} is {hi[0]}x{hi[1]} but its mask {s.label} is {hl[0]}x{hl[1]} (H x W)"]
        if mode == "full":
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load_image(s.image)
            except (ValueError, OSError) as e:
                problems.append(str(e))
            try:
                label = self.load_label(i)
            except (ValueError, OSError) as e:
                return problems + [str(e)]
            values = np.unique(label)
            bad = values[(values != self.ignore_index) & ((values < 0) | (values >= self.num_classes))]
            if bad.size:
                raw = " (after reducing zero label: stored values are one higher)" if self.reduce_zero_label else ""
                problems.append(f"mask {s.label} has label values {bad[:10].tolist()} outside the "
                                f"{self.num_classes} classes 0..{self.num_classes - 1}{raw}; only "
                                f"ignore_index={self.ignore_index} may lie outside")
        return problems

    def validate(self, mode: str = "full", workers: int | None = None) -> None:
        """Check every sample before training; raise one DatasetError listing every problem found.

        mode "fast" reads only file headers (existence, readability, image size == mask size);
        "full" also decodes every image and mask and checks the label values; "none" does nothing.
        """
        if mode not in VALIDATE_MODES:
            raise ValueError(f"validate mode must be one of {VALIDATE_MODES}, got {mode!r}")
        if mode == "none":
            return
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL
            results = pool.map(lambda i: self.check_sample(i, mode), range(len(self)), chunksize=16)
            problems = [p for r in results for p in r]
        if problems:
            raise DatasetError(problems, f"{self.name} ({len(self)} images, validate mode {mode!r})")
