"""Datasets (ADE20K, COCO-Stuff, folder of PNGs, synthetic; the training-free benchmarks' readers are in
train/zeroshot_data.py), image I/O (one loader, header reader, size guard and set of limits), transforms."""

from .ade20k import ADE20KDataset
from .base import DatasetError, SegDataset, read_label, reduce_zero_label
from .coco_stuff import COCOStuffDataset
from .folder import FolderDataset
from .images import (
    IMAGE_LIMITS,
    ImageFileError,
    ImageHeader,
    ImageLimits,
    check_pixels,
    load_image,
    read_header,
)
from .seg_transforms import TrainTransform, photometric_distortion
from .synthetic import SyntheticSegDataset, class_palette, make_sample, write_folder_dataset
from .transforms import normalize_image, resize_keep_ratio, to_image_tensor

__all__ = [
    "ADE20KDataset", "DatasetError", "SegDataset", "read_label", "reduce_zero_label", "COCOStuffDataset",
    "FolderDataset", "TrainTransform", "photometric_distortion", "SyntheticSegDataset",
    "class_palette", "make_sample", "write_folder_dataset", "load_image", "normalize_image",
    "resize_keep_ratio", "to_image_tensor", "IMAGE_LIMITS", "ImageFileError", "ImageHeader", "ImageLimits",
    "check_pixels", "read_header",
]
