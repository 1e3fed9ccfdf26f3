"""Image I/O and the test-time transforms shared by inference, zero-shot, the app and training.

`load_image` turns whatever a person has (a path, PIL image of any mode, numpy array, tensor) into an
RGB uint8 array, or raises an error that says what was wrong with it.
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import CLIP_MEAN, CLIP_STD

# Largest image we decode at all (pixels). Bigger files are refused before decoding (decompression bombs).
MAX_DECODE_PIXELS = 40000 * 40000
_PIL_LOCK = threading.Lock()  # PIL's pixel limit is a global: set under a lock (servers decode in threads)


@contextmanager
def decode_limits():
    """PIL's decompression-bomb limit set to MAX_DECODE_PIXELS (its warning silenced) for this block."""
    with _PIL_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_DECODE_PIXELS
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. 16-bit and 32-bit integer / float images are scaled down to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        wide = img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255)
        hi = 65535.0 if wide else 255.0
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            hi = 1.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # composite transparent pixels over white (what a viewer shows), instead of arbitrary hidden colours
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Any dtype -> uint8: bool -> 0/255, uint16 -> /257, floats in [0, 1] or [0, 255], integers in 0..255."""
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("image array contains NaN or Inf values")
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        arr = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise ValueError(f"integer image of dtype {arr.dtype} has values outside 0..255; "
                             "convert it to uint8")
        arr = arr.astype(np.uint8)
    return arr


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] > 4:
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"image array is empty (shape {arr.shape})")
    arr = _array_to_uint8(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.shape[-1] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3] * alpha + 255.0 * (1 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _open(path: Path, max_side: int | None) -> Image.Image:
    """Decode an image file (JPEGs reduced by the decoder itself when larger than max_side)."""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"image file is empty (0 bytes): {path}")
    try:
        with decode_limits():
            img = Image.open(path)
            if max_side and img.format == "JPEG" and max(img.size) > max_side:
                img.draft("RGB", (max_side, max_side))
            img.load()
            return img
    except UnidentifiedImageError as e:
        raise ValueError(f"not an image file (or an unsupported format): {path}") from e
    except Image.DecompressionBombError as e:
        raise ValueError(f"image {path} is too large to decode safely ({e})") from e
    except (OSError, SyntaxError) as e:  # truncated / corrupt data
        raise ValueError(f"image file is corrupt or truncated: {path} ({e})") from e


def _pil_array(image: Image.Image, max_side: int | None) -> np.ndarray:
    """A PIL image -> (H, W, 3) uint8, EXIF rotation applied, downscaled to max_side."""
    if image.width == 0 or image.height == 0:
        raise ValueError("image has zero width or height")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose the picture
        pass
    if max_side and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    try:
        return np.asarray(_pil_to_rgb(image)).copy()
    except OSError as e:
        raise ValueError(f"image data is corrupt or truncated ({e})") from e


def load_image(image, max_side: int | None = None) -> np.ndarray:
    """Path / PIL / numpy / tensor -> (H, W, 3) uint8 RGB, EXIF rotation applied.

    max_side: downscale (keeping the aspect ratio) so the longer side is at most this; for JPEG files the
    decoder itself reduces the image, so a 20000x20000 photo never occupies full-size memory.
    """
    if isinstance(image, (str, Path)):
        image = _open(Path(image), max_side)
    if isinstance(image, Image.Image):
        return _pil_array(image, max_side)
    if torch.is_tensor(image):
        t = image.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        image = t.numpy()
    if isinstance(image, np.ndarray):
        arr = _array_to_rgb(image)
        if max_side and max(arr.shape[:2]) > max_side:
            return load_image(Image.fromarray(arr), max_side)
        return arr
    raise TypeError(f"unsupported image type {type(image).__name__}: give a path, PIL image, numpy array "
                    "or tensor")


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
