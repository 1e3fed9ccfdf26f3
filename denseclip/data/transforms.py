"""The test-time transforms shared by inference, zero-shot, the app and training (image I/O: `images.py`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import CLIP_MEAN, CLIP_STD


# mmcv's resize is cv2-based; we only need the same *size* arithmetic and bilinear resampling.
def keep_ratio_size(h: int, w: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """mmcv `rescale` with keep_ratio: the largest scale with short side <= short_side, long <= max_long."""
    scale = min(max_long_side / max(h, w), short_side / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


def to_image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 255]."""
    rgb = np.ascontiguousarray(rgb)
    if not rgb.flags.writeable:  # e.g. np.asarray(PIL image): torch warns on read-only memory
        rgb = rgb.copy()
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float()


def normalize_image(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 255] -> CLIP-normalised (mean/std of OpenAI CLIP)."""
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * 255.0
    return (x - mean) / std


def resize_keep_ratio(x: torch.Tensor, short_side: int, max_long_side: int) -> torch.Tensor:
    """(B, C, H, W) -> resized with `keep_ratio_size`, bilinear (align_corners=False)."""
    size = keep_ratio_size(x.shape[2], x.shape[3], short_side, max_long_side)
    if size == tuple(x.shape[2:]):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
