"""DenseCLIP for object detection and instance segmentation on torchvision's RetinaNet and Mask R-CNN.

    model = denseclip.build_detector("denseclip-retinanet-rn50-coco")    # or "denseclip-maskrcnn-rn50-coco"
    r = denseclip.detect(model.eval(), "photo.jpg", score_threshold=0.3)   # r.boxes (N, 4), r.names, r.masks
    model = denseclip.load_detector("retinanet_denseclip_r50_fpn_1x_coco.pth")   # the authors' weights, as
                                                                               # mmdetection runs them
"""

from .backbone import DenseCLIPBackbone
from .data import CocoDetection, collate_detection, hflip, to_sample
from .detector import DenseCLIPDetector, aux_loss, aux_target, build_detector, load_detector
from .inference import DetectionResult, detect

__all__ = [
    "DenseCLIPBackbone", "CocoDetection", "collate_detection", "hflip", "to_sample", "DenseCLIPDetector",
    "aux_loss", "aux_target", "build_detector", "load_detector", "DetectionResult", "detect",
]
