"""The training and test pipelines of the DenseCLIP authors' mmseg configs, on numpy arrays.

Training (configs/_base_/datasets/ade20k*.py of the authors):
    random resize  scale (2048, 512) x ratio in [0.5, 2.0], keep ratio (mmcv arithmetic)
    random crop    512 (640 for ViT), retried up to 10 times until no class covers > 75% (cat_max_ratio)
    random flip    horizontal, p = 0.5
    photometric    mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue)
    normalise      CLIP mean / std
    pad            to the crop size: 0 for the image, 255 (ignore) for the label
Every random draw comes from the `np.random.Generator` passed in, so a sample's augmentation is a
function of the seed the training loop derives for it (resumable, identical across world sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .transforms import keep_ratio_size, normalize_image


def _pair(x) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, (int, np.integer)) else (int(x[0]), int(x[1]))


# ------------------------------------------------------------------------------------ geometry
def resize(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]):
    """(H, W, 3) uint8 bilinear and (H, W) label nearest -> `size` (h, w); like cv2 (no antialiasing)."""
    if tuple(image.shape[:2]) != tuple(size):
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        image = x[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
        if label is not None:
            lab = torch.from_numpy(np.ascontiguousarray(label))[None, None].float()
            label = F.interpolate(lab, size=size, mode="nearest")[0, 0].long().numpy()
    return image, label


def random_resize(image, label, rng: np.random.Generator, scale=(2048, 512), ratio_range=(0.5, 2.0)):
    """mmseg Resize(img_scale=scale, ratio_range, keep_ratio=True): scale x a uniform ratio, then the
    largest keep-ratio size whose long side <= max(scale) and short side <= min(scale)."""
    ratio = rng.random() * (ratio_range[1] - ratio_range[0]) + ratio_range[0]
    long_side, short_side = int(max(scale) * ratio), int(min(scale) * ratio)
    return resize(image, label, keep_ratio_size(image.shape[0], image.shape[1], short_side, long_side))


def _crop_box(h: int, w: int, crop: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    margin_h, margin_w = max(h - crop[0], 0), max(w - crop[1], 0)
    y1, x1 = int(rng.integers(0, margin_h + 1)), int(rng.integers(0, margin_w + 1))
    return y1, min(y1 + crop[0], h), x1, min(x1 + crop[1], w)


def random_crop(image, label, crop_size, rng: np.random.Generator, cat_max_ratio: float = 0.75,
                ignore_index: int = 255):
    """mmseg RandomCrop: up to 10 re-draws while one class covers >= cat_max_ratio of the (non-ignored)
    crop or the crop holds a single class; after 10 failures the 11th box is used as is."""
    crop = _pair(crop_size)
    h, w = label.shape
    box = _crop_box(h, w, crop, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y1, y2, x1, x2 = box
            values, counts = np.unique(label[y1:y2, x1:x2], return_counts=True)
            counts = counts[values != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = _crop_box(h, w, crop, rng)
    y1, y2, x1, x2 = box
    return image[y1:y2, x1:x2], label[y1:y2, x1:x2]


def random_flip(image, label, rng: np.random.Generator, prob: float = 0.5):
    """Horizontal flip of image and label together with probability `prob`."""
    if rng.random() < prob:
        return image[:, ::-1], label[:, ::-1]
    return image, label


def pad_to(image: torch.Tensor, label: torch.Tensor, size, pad_value: float = 0.0, ignore_index: int = 255):
    """Pad (3, H, W) image and (H, W) label at the bottom / right to `size` (mmseg Pad(size=crop))."""
    th, tw = _pair(size)
    ph, pw = max(th - image.shape[1], 0), max(tw - image.shape[2], 0)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=pad_value)
        label = F.pad(label, (0, pw, 0, ph), value=ignore_index)
    return image, label


# ------------------------------------------------------------------------------------ photometric
def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV with OpenCV's ranges (H in 0..179 = degrees / 2, S and V in 0..255)."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    delta = v - x.min(-1)
    s = np.where(v > 0, 255.0 * delta / np.maximum(v, 1e-6), 0.0)
    d = np.maximum(delta, 1e-6)
    h = np.where(v == r, 60.0 * (g - b) / d,
                 np.where(v == g, 120.0 + 60.0 * (b - r) / d, 240.0 + 60.0 * (r - g) / d))
    h = np.where(delta > 0, h, 0.0) % 360.0
    out = np.stack([np.round(h / 2.0) % 180, np.round(s), v], -1)
    return np.clip(out, 0, 255).astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hsv` (OpenCV ranges) -> uint8 RGB."""
    h = hsv[..., 0].astype(np.float32) * 2.0 / 60.0
    s, v = hsv[..., 1].astype(np.float32) / 255.0, hsv[..., 2].astype(np.float32)
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sectors = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    table = np.stack([np.stack(c, -1) for c in sectors])
    rgb = np.take_along_axis(table, i[None, ..., None].repeat(3, -1), 0)[0]
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # mmseg: float32 multiply-add, clip, astype(uint8) (truncation, not rounding)
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                           contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                           hue_delta: int = 18) -> np.ndarray:
    """mmseg PhotoMetricDistortion on uint8 RGB, each step applied with probability 1/2:
    brightness +-32, contrast x[0.5, 1.5] (before or after the colour steps, at random),
    saturation x[0.5, 1.5], hue +-18 (OpenCV hue units, i.e. +-36 degrees)."""
    img = image
    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):
        hsv = rgb_to_hsv(img)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        img = hsv_to_rgb(hsv)
    if rng.integers(2):
        hsv = rgb_to_hsv(img)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-hue_delta, hue_delta)) % 180
        img = hsv_to_rgb(hsv)
    if mode == 0 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    return img


# ------------------------------------------------------------------------------------ pipelines
@dataclass
class TrainTransform:
    """The authors' training pipeline (see the module docstring).

    __call__(image (H, W, 3) uint8, label (H, W) int, rng) -> (image (3, c, c) float32 CLIP-normalised,
    label (c, c) int64) with c = crop_size.
    """

    crop_size: int | tuple[int, int] = 512
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    ignore_index: int = 255

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        if image.shape[:2] != label.shape:
            raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
        if self.ratio_range is not None:
            image, label = random_resize(image, label, rng, self.scale, self.ratio_range)
        else:  # fixed keep-ratio resize to `scale`
            size = keep_ratio_size(*label.shape, min(self.scale), max(self.scale))
            image, label = resize(image, label, size)
        image, label = random_crop(image, label, self.crop_size, rng, self.cat_max_ratio, self.ignore_index)
        image, label = random_flip(image, label, rng, self.flip_prob)
        if self.photometric:
            image = photometric_distortion(np.ascontiguousarray(image), rng)
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        x = normalize_image(x[None])[0]
        y = torch.from_numpy(np.ascontiguousarray(label)).long()
        return pad_to(x, y, self.crop_size, 0.0, self.ignore_index)
