"""`detect()`: one image in (path, PIL, numpy, tensor), boxes / labels / scores (/ masks) out, at its size."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.images import load_image


@dataclass
class DetectionResult:
    """Detections in the input image's pixel coordinates, best first.

    boxes (N, 4) float xyxy; scores (N,); labels (N,) int64 indices into `class_names` (0-based);
    masks (N, H, W) bool (Mask R-CNN) or None; class_names: the model's names; image_size (H, W): the
    image the coordinates and masks refer to (the input, or its downscaled copy with `max_side`).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    masks: torch.Tensor | None = None
    image_size: tuple[int, int] | None = None

    @property
    def names(self) -> list[str]:
        """The class name of every detection."""
        return [self.class_names[i] for i in self.labels.tolist()]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@torch.no_grad()
def detect(model, image, score_threshold: float = 0.3, mask_threshold: float = 0.5,
           max_side: int | None = None) -> DetectionResult:
    """Detect objects in one image with a DenseCLIPDetector.

    image: a path, PIL image, (H, W, 3) numpy array or tensor (uint8 0..255 or float 0..1; EXIF rotation
    applied). The detector resizes it (cfg.min_size / max_size; the authors' checkpoints as mmdetection
    does) and maps boxes and masks back to the image given. score_threshold: detections kept (>=);
    mask_threshold: mask pixels kept (>=, mmdetection's mask_thr_binary). max_side: downscale bigger
    images first (boxes and masks are then in that size: `result.image_size`).
    """
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    rgb = load_image(image, max_side=max_side)  # (H, W, 3) uint8
    param = next(model.parameters())
    x = torch.from_numpy(rgb).permute(2, 0, 1).to(param.device, torch.float32).div_(255.0)
    was_training = model.training
    model.eval()
    try:
        out = model([x])[0]
    finally:
        model.train(was_training)
    keep = out["scores"] >= score_threshold
    masks = out["masks"][keep, 0].cpu() >= mask_threshold if "masks" in out else None  # mmdet's >=
    return DetectionResult(boxes=out["boxes"][keep].float().cpu(), scores=out["scores"][keep].float().cpu(),
                           labels=out["labels"][keep].cpu() - 1, class_names=tuple(model.class_names),
                           masks=masks, image_size=tuple(rgb.shape[:2]))
