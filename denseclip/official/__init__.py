"""The DenseCLIP authors' released checkpoints (mmcv `.pth`), translated to our models at the edge.

    cfg, state = load_official("denseclip_fpn_res50.pth")                           # segmentation (mmseg 0.x)
    cfg, state = load_official_detector("retinanet_denseclip_r50_fpn_1x_coco.pth")  # detection (mmdet 2.x)

`denseclip.load_checkpoint` / `load_detector` call these for `.pth` files (read with weights_only=True, the
architecture read off the tensors, key names translated by one table per task).
"""

from .common import read_official_checkpoint, rename
from .detection import (
    DETECTION_KEYS,
    config_from_official_detector,
    load_official_detector,
    translate_detector,
)
from .segmentation import SEGMENTATION_KEYS, config_from_official, load_official, translate


def authors_name(key: str) -> str:
    """Our key (of a segmentor or a detector) under the authors' name, for messages about their files."""
    tables = SEGMENTATION_KEYS + DETECTION_KEYS["retinanet"] + DETECTION_KEYS["maskrcnn"]
    return rename(key, tables, reverse=True) or key


__all__ = [
    "read_official_checkpoint", "SEGMENTATION_KEYS", "authors_name", "config_from_official", "load_official",
    "translate", "DETECTION_KEYS", "config_from_official_detector", "load_official_detector",
    "translate_detector",
]
