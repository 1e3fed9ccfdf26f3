"""Datasets (ADE20K, COCO-Stuff, VOC, PASCAL Context, COCO-Object, Cityscapes, folder of PNGs, synthetic)
image I/O (one loader, header reader, size guard and set of limits) and image transforms."""

from .ade20k import ADE20KDataset
from .base import DatasetError, SegDataset, read_label, reduce_zero_label
from .cityscapes import CityscapesDataset
from .coco_object import COCOObjectDataset
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
from .pascal_context import PascalContextDataset
from .peer_names import peer_class_names
from .seg_transforms import TrainTransform, photometric_distortion
from .synthetic import SyntheticSegDataset, class_palette, make_sample, write_folder_dataset
from .transforms import normalize_image, resize_keep_ratio, to_image_tensor
from .voc import PascalVOCDataset

__all__ = [
    "ADE20KDataset", "DatasetError", "SegDataset", "read_label", "reduce_zero_label", "COCOStuffDataset",
    "FolderDataset", "TrainTransform", "photometric_distortion", "SyntheticSegDataset",
    "class_palette", "make_sample", "write_folder_dataset", "load_image", "normalize_image",
    "resize_keep_ratio", "to_image_tensor", "CityscapesDataset", "COCOObjectDataset", "PascalContextDataset",
    "PascalVOCDataset", "peer_class_names", "IMAGE_LIMITS", "ImageFileError", "ImageHeader", "ImageLimits",
    "check_pixels", "read_header",
]
