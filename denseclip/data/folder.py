"""Your own data: a folder of images, a folder of masks, and a classes.txt.

    my_data/
      classes.txt              one class name per line; line i (from 0) is class id i
      images/  a.jpg b.png ... (or images/train/, images/val/ for splits)
      masks/   a.png b.png ... same file stems; palette or single-channel PNG of class ids, 255 = ignore
      splits/train.txt, splits/val.txt   optional: image stems, one per line (a split of a flat folder)

`denseclip.data.synthetic.write_folder_dataset` writes a small example in exactly this layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..vocab import get_class_names
from .base import DatasetError, SegDataset, list_images, pair_by_stem, require_dir

FOLDER_LAYOUT = """  my_data/
    classes.txt                     one class name per line (line i = class id i)
    images/*.jpg|png                or images/<split>/*.jpg|png
    masks/*.png                     or masks/<split>/*.png; palette or single-channel PNG, 255 = ignore
    splits/<split>.txt              optional list of image stems for a flat layout"""


class FolderDataset(SegDataset):
    """A folder dataset (see the module docstring).

    Args:
        root: the dataset folder.
        split: None or "all" for every image in `images/`; otherwise `images/<split>/` when that
            folder exists, else the stems listed in `splits/<split>.txt`.
        class_names: overrides classes.txt (a list, a comma-separated string or a file path).
        reduce_zero_label: masks store 0 = unlabelled and 1..K = classes (ADE20K convention).
        ignore_index: mask value that does not count.
    """

    def __init__(self, root: str | Path, split: str | None = None,
                 class_names: Sequence[str] | str | None = None, reduce_zero_label: bool = False,
                 ignore_index: int = 255):
        root = require_dir(Path(root), "dataset root", FOLDER_LAYOUT)
        img_root = require_dir(root / "images", "images", FOLDER_LAYOUT)
        mask_root = require_dir(root / "masks", "masks", FOLDER_LAYOUT)
        if class_names is None:
            class_names = root / "classes.txt"
            if not class_names.is_file():
                raise FileNotFoundError(f"class-name file not found: {class_names} (one class name per line)"
                                        f"\nexpected layout:\n{FOLDER_LAYOUT}")
        class_names = get_class_names(class_names)
        name = f"folder dataset {root}" + (f" [{split}]" if split else "")
        if split in (None, "all"):
            img_dir, mask_dir, stems = img_root, mask_root, None
        elif (img_root / split).is_dir():
            img_dir, mask_dir, stems = img_root / split, require_dir(mask_root / split, f"{split} masks",
                                                                     FOLDER_LAYOUT), None
        else:
            split_file = root / "splits" / f"{split}.txt"
            if not split_file.is_file():
                raise FileNotFoundError(f"split {split!r} not found in {root}: neither {img_root / split}/ "
                                        f"nor {split_file} exists\nexpected layout:\n{FOLDER_LAYOUT}")
            img_dir, mask_dir = img_root, mask_root
            stems = [s.strip() for s in split_file.read_text("utf-8").splitlines() if s.strip()]
        images = list_images(img_dir)
        if stems is not None:
            by_stem = {p.stem: p for p in images}
            missing = [f"{split_file}: image {s!r} listed but not found in {img_dir}"
                       for s in stems if s not in by_stem]
            if missing:
                raise DatasetError(missing, name)
            images = [by_stem[s] for s in stems]
        if not images:
            raise DatasetError([f"no images (*.jpg, *.png, ...) in {img_dir}"], name)
        samples = pair_by_stem(images, mask_dir, ".png", name)
        super().__init__(samples, class_names, ignore_index=ignore_index, reduce_zero_label=reduce_zero_label,
                         name=name)
        self.root, self.split = root, split
