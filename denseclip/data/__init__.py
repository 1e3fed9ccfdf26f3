"""Datasets and image transforms."""

from .transforms import load_image, normalize_image, resize_keep_ratio, to_image_tensor

__all__ = ["load_image", "normalize_image", "resize_keep_ratio", "to_image_tensor"]
