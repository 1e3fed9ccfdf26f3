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

from .images import TURNED, load_image, open_image, read_header

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VALIDATE_MODES = ("full", "fast", "none")
UPRIGHT_HINT = "save the image upright (PIL.ImageOps.exif_transpose(img).save(path)) or turn the mask"


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
    pairs = [SamplePaths(img, Path(label_dir) / f"{img.stem}{label_suffix}") for img in images]
    missing = [f"image without its mask: {p.image} (expected {p.label})" for p in pairs
               if not p.label.is_file()]
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
    images = list_images(img_dir, (".jpg", ".jpeg", ".png"))
    return split, pair_by_stem(images, ann_dir, label_suffix, name), name


def read_label(path: str | Path) -> np.ndarray:
    """A label PNG -> (H, W) int64 of raw values.

    Palette ("P") PNGs give their palette *indices* (the palette is only for display, as in VOC);
    single-channel 8/16-bit PNGs give their values; RGB files are accepted only when R == G == B.
    """
    path = Path(path)
    img, _ = open_image(path, what="mask", exif=False)
    with img:
        try:
            arr, mode = np.asarray(img), img.mode
        except (OSError, SyntaxError) as e:
            raise ValueError(f"mask file is corrupt or truncated: {path} ({e})") from e
    if mode in ("RGB", "RGBA", "LA"):
        chans = arr[..., :3] if mode != "LA" else arr[..., :1]
        if not (chans == chans[..., :1]).all():
            raise ValueError(f"mask {path} is a colour ({mode}) image; masks must hold class indices: save "
                             "it as a palette PNG or a single-channel (L) PNG of class ids")
        arr = chans[..., 0]
    elif mode not in ("P", "L", "1", "I;16", "I;16B", "I;16L", "I;16N", "I"):
        raise ValueError(f"mask {path} has unsupported image mode {mode!r}; use a palette or single-channel "
                         "PNG of class ids")
    return arr.astype(np.int64)


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's reduce_zero_label: 0 -> ignore (255), every other value minus one (ADE20K)."""
    out = label.astype(np.int64) - 1
    out[label == 0] = 255
    out[out == 254] = 255  # a raw 255 stays ignore
    return out


def size_mismatch(image: Path, image_hw: tuple[int, int], mask: Path, mask_hw: tuple[int, int],
                  orientation: int) -> str:
    """The problem of an image and its mask of different sizes (H x W as loaded), naming both files."""
    h, w = image_hw
    msg = f"image {image} is {h}x{w} but its mask {mask} is {mask_hw[0]}x{mask_hw[1]} (H x W)"
    if orientation in TURNED:
        drawn = "the size the image is stored with: it was drawn on the stored pixels" \
            if tuple(mask_hw) == (w, h) else "neither orientation's size"
        msg += f"; loading turns the image by 90 degrees (EXIF orientation {orientation}) and the mask has " \
               f"{drawn}: {UPRIGHT_HINT}"
    return msg


def check_label_values(label: np.ndarray, path: Path, num_classes: int, ignore_index: int,
                       reduced: bool = False) -> None:
    """A ValueError naming the mask file when it holds values outside 0..K-1 other than ignore_index."""
    values = np.unique(label)
    bad = values[(values != ignore_index) & ((values < 0) | (values >= num_classes))]
    if bad.size:
        raw = " (after reducing zero label: stored values are one higher)" if reduced else ""
        raise ValueError(f"mask {path} has label values {bad[:10].tolist()} outside the {num_classes} "
                         f"classes 0..{num_classes - 1}{raw}; only ignore_index={ignore_index} may lie "
                         "outside: fix the mask or the class list (validate() lists every such file)")


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
        self.samples, self.class_names, self.name = list(samples), tuple(class_names), name
        self.ignore_index, self.reduce_zero_label = ignore_index, reduce_zero_label
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
        """(H, W) int64 in training form; values outside the classes (but ignore_index) are an error naming
        the file, so a dataset used without validation still stops at the bad mask."""
        path = self.samples[i].label
        label = self.map_label(read_label(path))
        label = reduce_zero_label(label) if self.reduce_zero_label else label
        check_label_values(label, path, self.num_classes, self.ignore_index, self.reduce_zero_label)
        return label

    def map_label(self, raw: np.ndarray) -> np.ndarray:
        """A dataset whose files store other values than its classes converts them here (before the check)."""
        return raw

    def __getitem__(self, i: int) -> dict:
        image, label = self.load_image(i), self.load_label(i)
        if image.shape[:2] != label.shape:
            s = self.samples[i]
            orientation = read_header(s.image).orientation
            raise ValueError(size_mismatch(s.image, image.shape[:2], s.label, label.shape, orientation))
        return {"image": image, "label": label, "name": self.samples[i].image.stem}

    # ------------------------------------------------------------------ validation
    def _check(self, i: int, mode: str) -> tuple[list[str], bool]:
        """Problems of one sample (fast: headers and sizes, the image's as loading turns it by its EXIF
        orientation; full: also decoding and label values), and whether the image is square and turned by
        its EXIF orientation: then the sizes cannot tell whether the mask was drawn on the turned or the
        stored picture."""
        s, problems = self.samples[i], []
        try:
            image, mask = read_header(s.image), read_header(s.label, what="mask").stored_hw  # mask: as stored
        except (OSError, ValueError) as e:
            return [str(e)], False
        hi, wi, orientation = image.height, image.width, image.orientation
        if (hi, wi) != mask:
            return [size_mismatch(s.image, (hi, wi), s.label, mask, orientation)], False
        for load in (lambda: load_image(s.image), lambda: self.load_label(i)) if mode == "full" else ():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load()
            except (ValueError, OSError) as e:
                problems.append(str(e))
        return problems, orientation in TURNED and hi == wi

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
            results = list(pool.map(lambda i: self._check(i, mode), range(len(self)), chunksize=16))
        problems = [p for r, _ in results for p in r]
        if problems:
            raise DatasetError(problems, f"{self.name} ({len(self)} images, validate mode {mode!r})")
        turned = [str(self.samples[i].image) for i, (_, square) in enumerate(results) if square]
        if turned:
            warnings.warn(f"{len(turned)} square image(s) of {self.name} carry an EXIF rotation, e.g. "
                          f"{turned[:3]}: they load turned by 90 degrees, so their masks must be drawn on "
                          "the turned pictures (drawn on the stored pixels, image and mask are 90 degrees "
                          f"apart and no size check can tell); to be sure, {UPRIGHT_HINT}", stacklevel=2)
