"""DenseCLIP for object detection and instance segmentation on torchvision's RetinaNet and Mask R-CNN.

    from denseclip.detection import build_detector, detect
    model = build_detector("denseclip-retinanet-rn50-coco")        # or "denseclip-maskrcnn-rn50-coco", a config
    r = detect(model.eval(), "photo.jpg", score_threshold=0.3)       # r.boxes (N, 4), r.names, r.scores, r.masks
"""

from .backbone import DenseCLIPBackbone
from .config import (
    DETECTION_PRESETS,
    TINY_DET_CLASSES,
    DetectionConfig,
    get_detection_preset,
    list_detection_presets,
)
from .data import CocoDetection, collate_detection, hflip, to_sample
from .detector import (
    DenseCLIPDetector,
    aux_loss,
    aux_target,
    build_detector,
    load_detector,
    read_detection_config,
    save_detector,
)
from .evaluation import coco_eval, detections_to_coco, evaluate_detector, predict_dataset
from .inference import DetectionResult, detect
from .synthetic import make_synthetic_image, write_synthetic_coco

__all__ = [
    "DenseCLIPBackbone", "DETECTION_PRESETS", "TINY_DET_CLASSES", "DetectionConfig", "get_detection_preset",
    "list_detection_presets", "CocoDetection", "collate_detection", "hflip", "to_sample", "DenseCLIPDetector", "aux_loss",
    "aux_target", "build_detector", "load_detector", "read_detection_config", "save_detector", "coco_eval", "detections_to_coco",
    "evaluate_detector", "predict_dataset", "DetectionResult", "detect", "make_synthetic_image",
    "write_synthetic_coco",
]
