"""The DenseCLIP authors' released checkpoints (mmcv `.pth`), translated to our models at the edge.

    cfg, state = load_official("denseclip_fpn_res50.pth")                           # segmentation (mmseg 0.x)
    cfg, state = load_official_detector("retinanet_denseclip_r50_fpn_1x_coco.pth")  # detection (mmdet 2.x)

`denseclip.load_checkpoint` and `denseclip.load_detector` call these for `.pth` files: the files are read
with weights_only=True, the architecture is read off the tensors, and each task's key names are
translated by one table (`SEGMENTATION_KEYS`, `DETECTION_KEYS`).
"""

from .common import read_official_checkpoint
from .detection import (
    DETECTION_KEYS,
    authors_detector_name,
    config_from_official_detector,
    load_official_detector,
    translate_detector,
)
from .segmentation import SEGMENTATION_KEYS, authors_name, config_from_official, load_official, translate

__all__ = [
    "read_official_checkpoint", "SEGMENTATION_KEYS", "authors_name", "config_from_official", "load_official",
    "translate", "DETECTION_KEYS", "authors_detector_name", "config_from_official_detector",
    "load_official_detector", "translate_detector",
]
