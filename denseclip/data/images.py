"""Image input for every caller: the limits, the header reader, the decompression-bomb guard, the loader.

A decoder needs memory for every pixel, so the size must be known first: a 1.2 MB PNG can hold 20000x20000
pixels (1.2 GB decoded). `read_header` reads format and size without the pixel data, `check_pixels` refuses
what `IMAGE_LIMITS` does not allow, and `load_image` does both before it decodes a file; it turns a path, a
PIL image of any mode, a numpy array or a tensor into RGB uint8, or says what was wrong with it.

    header = read_header("photo.png")        # ImageHeader("PNG", width, height) as displayed
    rgb = load_image("photo.png")             # (H, W, 3) uint8, EXIF rotation applied
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)  # EXIF orientations shown turned by 90 degrees (width and height swap)
REDUCED_ON_DECODE = ("JPEG", "MPO")  # decoded at up to 1/8 size when smaller is asked for (Image.draft)


@dataclass(frozen=True)
class ImageLimits:
    """Every cap on the images people send: the app's uploads and API, the library's files."""

    upload_bytes: int = 30 << 20  # the app's upload limit, Gradio's "30mb" (it answers 413 above it)
    inline_bytes: int = 64 << 20  # an image sent inline (base64) through the app's API
    max_pixels: int = 50_000_000  # an image decoded at full size: refused above this, from its header
    max_jpeg_pixels: int = 40_000 * 40_000  # a JPEG decoded reduced (max_side): at most 5000x5000 in memory


IMAGE_LIMITS = ImageLimits()
_OPEN_LOCK = threading.Lock()  # Pillow's pixel limit is a global: lifted under a lock (servers use threads)


class ImageFileError(ValueError):
    """An image file that cannot be used. `reason`: "empty", "format", "corrupt" or "pixels"; `detail`:
    what the decoder said (corrupt files)."""

    def __init__(self, message: str, reason: str, detail: str = ""):
        super().__init__(message)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int  # as displayed: swapped when the EXIF orientation turns the image by 90 degrees
    height: int
    orientation: int = field(default=1, compare=False)  # the EXIF orientation tag (1: as stored)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def stored_hw(self) -> tuple[int, int]:
        """(H, W) of the pixels as stored, before the EXIF rotation."""
        return (self.width, self.height) if self.orientation in TURNED else (self.height, self.width)


def open_image(path: str | Path, formats: tuple[str, ...] | None = None, what: str = "image",
               exif: bool = True) -> tuple[Image.Image, ImageHeader]:
    """Image.open, which reads the header only (Pillow decodes on load()), for an image of any size:
    `check_pixels` is the size check, not Pillow's (which refuses even to say the size above ~179 MP).
    exif=False leaves the EXIF orientation unread (reading it before load() would hide a PNG's late eXIf
    chunk from the decoder's rotation). Errors as `read_header`'s."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if path.stat().st_size == 0:
        raise ImageFileError(f"{what} file is empty (0 bytes): {path}", "empty")
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(path, formats=formats)
            finally:
                Image.MAX_IMAGE_PIXELS = old
        try:  # Image.getexif, not PNG's override of it, which decodes the whole image to look for EXIF
            orientation = int(Image.Image.getexif(img).get(EXIF_ORIENTATION, 1) or 1) if exif else 1
        except Exception:  # noqa: BLE001 - a broken EXIF block is shown as stored, as load_image does
            orientation = 1
    except UnidentifiedImageError:
        raise ImageFileError(f"{what} file is unreadable (not an image, or not a format this reads): {path}",
                             "format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageFileError(f"{what} file is corrupt or truncated: {path} ({e})", "corrupt", str(e)) from e
    w, h = img.size
    return img, ImageHeader(str(img.format), *((h, w) if orientation in TURNED else (w, h)), orientation)


def read_header(path: str | Path, formats: tuple[str, ...] | None = None, what: str = "image") -> ImageHeader:
    """Format and displayed size from a file's header, without decoding (milliseconds, no pixel memory).
    formats: the Pillow formats accepted (None: all). Errors (FileNotFoundError, ImageFileError) call the
    file `what` ("image", "mask")."""
    img, header = open_image(path, formats, what)
    img.close()
    return header


def check_pixels(header: ImageHeader, limits: ImageLimits = IMAGE_LIMITS, reduced: bool = False) -> None:
    """The decompression-bomb guard: an ImageFileError ("pixels") for an image above its limit, which is
    `max_jpeg_pixels` for a JPEG decoded `reduced` (Image.draft) and `max_pixels` for everything else."""
    jpeg = reduced and header.format in REDUCED_ON_DECODE
    name = "max_jpeg_pixels" if jpeg else "max_pixels"
    limit = getattr(limits, name)
    if header.pixels > limit:
        raise ImageFileError(f"image is {header.width}x{header.height} pixels, more than the "
                             f"{limit / 1e6:,.0f} MP ImageLimits.{name} allows to decode; downscale it first",
                             "pixels")


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16-bit and 32-bit integer / float images scaled to 8 bits as arrays are,
    transparent pixels composited over white (what a viewer shows)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        wide = img.mode != "F" and (img.mode != "I" or arr.max(initial=0) > 255)  # 16-bit values
        return Image.fromarray(_array_to_uint8(arr.clip(0, 65535).astype(np.uint16) if wide else arr), "L") \
            .convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Any dtype -> uint8: bool -> 0/255, uint16 -> /257, floats in [0, 1] or [0, 255], integers in 0..255."""
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:  # any byte order
        return (arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError("image array contains NaN or Inf values")
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        raise ValueError(f"integer image of dtype {arr.dtype} has values outside 0..255; convert it to uint8")
    return arr.astype(np.uint8, copy=False)


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """(H, W), (H, W, 1|3|4) or (1|3|4, H, W) of any dtype -> an L, RGB or RGBA PIL image."""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] > 4:
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"image array is empty (shape {arr.shape})")
    return Image.fromarray(np.ascontiguousarray(_array_to_uint8(arr)))  # L, RGB or RGBA


def _pil_array(image: Image.Image, max_side: int | None, exif: bool = True) -> np.ndarray:
    """A PIL image -> (H, W, 3) uint8, EXIF rotation applied (if `exif`), downscaled to max_side."""
    if image.width == 0 or image.height == 0:
        raise ValueError("image has zero width or height")
    try:
        image = ImageOps.exif_transpose(image) if exif else image
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
        pass
    if max_side and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    try:
        return np.asarray(_pil_to_rgb(image)).copy()
    except OSError as e:
        raise ValueError(f"image data is corrupt or truncated ({e})") from e


def _decode(path: Path, max_side: int | None, limits: ImageLimits, exif: bool) -> np.ndarray:
    """Check the header (`check_pixels`), then decode (JPEGs reduced by the decoder when max_side asks)."""
    img, header = open_image(path, exif=False)
    with img:
        check_pixels(header, limits, reduced=bool(max_side))
        if max_side and header.format in REDUCED_ON_DECODE and max(img.size) > max_side:
            img.draft("RGB", (max_side, max_side))
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageFileError(f"image file is corrupt or truncated: {path} ({e})", "corrupt", str(e)) \
                from e
        return _pil_array(img, max_side, exif)


def load_image(image, max_side: int | None = None, limits: ImageLimits = IMAGE_LIMITS,
               exif: bool = True) -> np.ndarray:
    """Path / PIL / numpy / tensor -> (H, W, 3) uint8 RGB, EXIF rotation applied (unless exif=False).

    max_side: downscale (keeping the aspect ratio) so the longer side is at most this; for JPEG files the
    decoder itself reduces the image, so a 20000x20000 photo never occupies full-size memory. Files above
    `limits` are refused from their header (ImageFileError), before decoding.
    """
    if isinstance(image, (str, Path)):
        return _decode(Path(image), max_side, limits, exif)
    if isinstance(image, Image.Image):
        return _pil_array(image, max_side, exif)
    if torch.is_tensor(image):
        t = image.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        image = t.float().numpy() if t.is_floating_point() else t.numpy()
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3 and image.size and \
                not (max_side and max(image.shape[:2]) > max_side):
            return np.ascontiguousarray(image)  # already RGB uint8: no copy of a large picture
        return _pil_array(_array_to_pil(image), max_side, exif=False)
    raise TypeError(f"unsupported image type {type(image).__name__}: give a path, PIL image, numpy array "
                    "or tensor")
