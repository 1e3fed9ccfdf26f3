"""Uploaded image files: read the header, refuse what this server will not decode, then decode bounded.

A decoder needs memory for every pixel, so the size must be known before decoding: a 1.2 MB PNG can
hold 20000x20000 pixels (1.2 GB decoded). `image_header` reads format and size without touching the
pixel data, for every accepted format; `read_image` refuses images above `max_pixels` from it, except
JPEGs, which `load_image` decodes at a reduced size (the JPEG decoder itself downscales by up to 8).

    header = image_header("upload.png")           # ImageHeader("PNG", 20000, 20000); UserError if unusable
    rgb, info = read_image("upload.png")           # UserError: "The image is 20,000x20,000 pixels ..."
"""

from __future__ import annotations

import base64
import binascii
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from denseclip.data.transforms import load_image

from .errors import UserError

MAX_SIDE = 1024  # decoded images are downscaled to this long side (results are at this size)
MAX_PIXELS = 50_000_000  # non-JPEG images above this are refused from their header (full decode needed)
MAX_DATA_URL_BYTES = 64 << 20  # images sent inline (base64) through the API
MAX_JPEG_PIXELS = 40_000 * 40_000  # JPEGs are decoded at 1/8 scale: at most 5000x5000 in memory
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # what Pillow may open for a visitor (JPEG: MPO too)
DOWNSCALED_ON_DECODE = ("JPEG", "MPO")
EXIF_ORIENTATION = 0x0112
ROTATED_90 = (5, 6, 7, 8)  # EXIF orientations shown rotated by 90 degrees


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int  # as displayed: swapped when the header's EXIF orientation turns the image by 90 degrees
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _open(path: Path) -> Image.Image:
    """Image.open limited to FORMATS, reading the header only (Pillow decodes on load())."""
    with warnings.catch_warnings():  # we compare the size with our own limits below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path, formats=FORMATS)
        except Image.DecompressionBombError:
            pass
    # Above ~179 MP Pillow's open refuses even to say the size; its format plugins (the same table
    # Image.open walks) read the header without that check.
    Image.init()
    with open(path, "rb") as fp:
        prefix = fp.read(16)
    for fmt in FORMATS:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None or (accept is not None and (isinstance(ok := accept(prefix), str) or not ok)):
            continue
        return factory(str(path))
    raise UnidentifiedImageError(str(path))


def image_header(path: str | Path) -> ImageHeader:
    """Format and displayed size from the file's header, without decoding (milliseconds, no pixel memory).

    Raises UserError for an empty, unknown, unsupported or corrupt file.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise UserError("The image file is empty (0 bytes). Upload it again, or choose another file.")
    try:
        with _open(path) as im:
            w, h = int(im.width), int(im.height)
            try:  # Image.getexif, not PNG's override of it, which decodes the whole image to look for EXIF
                if Image.Image.getexif(im).get(EXIF_ORIENTATION) in ROTATED_90:
                    w, h = h, w
            except Exception:  # a broken EXIF block is the decoder's business (the image still shows)
                pass
            return ImageHeader(str(im.format), w, h)
    except UnidentifiedImageError:
        raise UserError("This file is not an image, or not in a format this app reads. Use a JPEG, PNG, "
                        "WebP, GIF, BMP or TIFF file.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UserError(f"The image file is corrupt or truncated ({e}). Save it again and upload "
                        "the new file.") from None


def check_header(header: ImageHeader, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse images without pixels, non-JPEG images above `max_pixels`, JPEGs above MAX_JPEG_PIXELS."""
    w, h, fmt = header.width, header.height, header.format
    if w == 0 or h == 0:
        raise UserError(f"The image has no pixels ({w}x{h}).")
    if fmt in DOWNSCALED_ON_DECODE and header.pixels > MAX_JPEG_PIXELS:
        raise UserError(f"The image is {w:,}x{h:,} pixels, larger than this app can decode safely. "
                        "Downscale it first.")
    if fmt not in DOWNSCALED_ON_DECODE and header.pixels > max_pixels:
        raise UserError(f"The image is {w:,}x{h:,} pixels ({header.pixels / 1e6:.0f} MP). {fmt} images "
                        f"above {max_pixels / 1e6:.0f} MP are too large for this app: downscale it, or "
                        "save it as JPEG (large JPEGs are fine).")


def read_image(path: str | Path, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS
               ) -> tuple[np.ndarray, dict]:
    """Check the header, then decode with `load_image` (any mode, EXIF rotation, long side <= max_side).

    Returns the (H, W, 3) uint8 RGB array and facts for the results: name, format,
    original_size [H, W] (as displayed), size [H, W] (as decoded), downscaled.
    """
    path = Path(path)
    header = image_header(path)
    check_header(header, max_pixels)
    try:
        rgb = load_image(path, max_side=max_side)
    except (ValueError, OSError) as e:
        reason = str(e).replace(str(path), path.name).replace(str(path.parent), "")  # no server paths
        raise UserError(f"Could not read the image: {reason}") from None
    except MemoryError:
        raise UserError("The image is too large to decode on this server. Downscale it first.") from None
    h, w = header.height, header.width
    if w != h and (rgb.shape[0] > rgb.shape[1]) != (h > w):  # EXIF the header could not see (PNG after
        h, w = w, h  # the pixels): load_image rotated it
    info = {"name": path.name, "format": header.format, "original_size": [h, w], "size": list(rgb.shape[:2]),
            "downscaled": max(w, h) > max_side}
    return rgb, info


def save_data_url(url: str, folder: Path) -> Path:
    """An image sent inline as a base64 data URL, written to `folder` (then checked like an upload)."""
    head, _, data = url.partition(",")
    if not head.startswith("data:") or ";base64" not in head or len(data) > MAX_DATA_URL_BYTES * 4 // 3 + 4:
        raise UserError("The image sent inline is not a base64 data URL, or it is too large.")
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raise UserError("The image sent inline is not valid base64 data.") from None
    path = Path(folder) / "inline_image"
    path.write_bytes(raw)
    return path


def describe_upload(path: str | Path | None, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS,
                    verb: str = "segmented") -> str:
    """One line about an uploaded file, from its header alone: what will happen ("`verb` at about WxH"),
    or why it cannot be used.

    Raises UserError (the same message Segment or Detect would give) for a file that will be refused.
    """
    if not path or str(path).startswith("data:"):
        return ""
    header = image_header(path)
    check_header(header, max_pixels)
    w, h = header.width, header.height
    if max(w, h) <= max_side:
        return f"{w}×{h} {header.format}."
    s = max_side / max(w, h)
    return f"{w}×{h} {header.format}: {verb} at about {round(w * s)}×{round(h * s)}."
