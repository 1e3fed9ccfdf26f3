"""The `data:` section of a segmentation run: which dataset, which splits, which augmentation.

    data:
      type: ade20k            # ade20k | coco_stuff | folder | synthetic
      root: data/ade/ADEChallengeData2016
      crop_size: 512          # 640 for ViT-B/16
      scale: [2048, 512]      # mmseg img_scale; random ratio in ratio_range
"""

from __future__ import annotations

from dataclasses import dataclass

from denseclip.config import Config
from denseclip.data.ade20k import ADE20KDataset
from denseclip.data.coco_stuff import COCOStuffDataset
from denseclip.data.folder import FolderDataset
from denseclip.data.seg_transforms import TrainTransform
from denseclip.data.synthetic import SyntheticSegDataset

DATASET_TYPES = ("ade20k", "coco_stuff", "folder", "synthetic")
_DEFAULT_SPLITS = {"ade20k": ("training", "validation"), "coco_stuff": ("train2017", "val2017"),
                   "folder": ("train", "val"), "synthetic": ("train", "val")}


@dataclass
class DataConfig(Config):
    type: str = "ade20k"
    root: str | None = None
    train_split: str | None = None  # None: the dataset's usual name (training / train2017 / train)
    val_split: str | None = None  # None: the usual name; "none" (or "") disables evaluation
    class_names: list[str] | str | None = None  # folder: instead of classes.txt
    reduce_zero_label: bool = False  # folder: masks store 0 = unlabelled, 1..K = classes
    # training augmentation (the authors' pipeline)
    crop_size: int = 512
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] | None = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    # checks before training: "full" decodes every file, "fast" reads headers, "none" skips
    validate: str = "full"
    # synthetic data (type: synthetic)
    synthetic_train_length: int = 256
    synthetic_val_length: int = 16
    synthetic_size: tuple[int, int] = (64, 96)

    def __post_init__(self):
        if self.type not in DATASET_TYPES:
            raise ValueError(f"data.type must be one of {DATASET_TYPES}, got {self.type!r}")
        if self.type != "synthetic" and not self.root:
            raise ValueError(f"data.root is required for data.type={self.type!r} "
                             "(e.g. --data.root /path/to/data)")
        if self.validate not in ("full", "fast", "none"):
            raise ValueError(f"data.validate must be 'full', 'fast' or 'none', got {self.validate!r}")

    def splits(self) -> tuple[str, str | None]:
        train, val = _DEFAULT_SPLITS[self.type]
        if self.val_split is not None:
            val = self.val_split if self.val_split not in ("", "none") else None
        return self.train_split or train, val


def build_dataset(cfg: DataConfig, split: str, seed: int = 0):
    """The dataset of one split (raw samples; see denseclip.data.base.SegDataset)."""
    if cfg.type == "ade20k":
        return ADE20KDataset(cfg.root, split)
    if cfg.type == "coco_stuff":
        return COCOStuffDataset(cfg.root, split)
    if cfg.type == "folder":
        return FolderDataset(cfg.root, split, class_names=cfg.class_names,
                             reduce_zero_label=cfg.reduce_zero_label)
    train = split == _DEFAULT_SPLITS["synthetic"][0]
    names = tuple(cfg.class_names) if isinstance(cfg.class_names, (list, tuple)) else None
    kwargs = {"class_names": names} if names else {}
    return SyntheticSegDataset(cfg.synthetic_train_length if train else cfg.synthetic_val_length, seed=seed,
                               size=cfg.synthetic_size, offset=0 if train else 10**6, **kwargs)


def build_train_transform(cfg: DataConfig, ignore_index: int = 255) -> TrainTransform:
    return TrainTransform(crop_size=cfg.crop_size, scale=tuple(cfg.scale),
                          ratio_range=tuple(cfg.ratio_range) if cfg.ratio_range else None,
                          cat_max_ratio=cfg.cat_max_ratio, flip_prob=cfg.flip_prob,
                          photometric=cfg.photometric, ignore_index=ignore_index)


def resolve_class_names(model_cfg, dataset, explicit: bool):
    """The model's classes are the dataset's label space. Returns the model config to use:

    - names set explicitly in the model section (`model.class_names`) are kept when their count matches
      the dataset (they are only the prompt text), and are an error otherwise;
    - otherwise the dataset's names (classes.txt of a folder dataset, ADE20K's 150, ...).
    """
    if tuple(model_cfg.class_names) == tuple(dataset.class_names):
        return model_cfg
    if explicit:
        if model_cfg.num_classes != dataset.num_classes:
            raise ValueError(f"model.class_names has {model_cfg.num_classes} names but the dataset "
                             f"{dataset.name} has {dataset.num_classes} classes; give one name per class")
        return model_cfg
    return model_cfg.replace(class_names=tuple(dataset.class_names))
