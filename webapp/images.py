"""Uploaded image files, in the words a visitor reads: the library's header check and loader
(`denseclip.data.images`, with its limits `IMAGE_LIMITS`) behind visitor-facing messages, and the data-URL
reader of the API.

    header = image_header("upload.png")           # ImageHeader("PNG", 20000, 20000); UserError if unusable
    rgb, info = read_image("upload.png")           # UserError: "The image is 20,000x20,000 pixels ..."
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from pathlib import Path

import numpy as np

from denseclip.data.images import (
    EXIF_ORIENTATION,  # noqa: F401 - part of this module's interface (tests)
    IMAGE_LIMITS,
    REDUCED_ON_DECODE,
    ImageFileError,
    ImageHeader,
    check_pixels,
    load_image,
    read_header,
)

from .errors import UserError

MAX_SIDE = 1024  # decoded images are downscaled to this long side (results are at this size)
MAX_PIXELS = IMAGE_LIMITS.max_pixels  # non-JPEG images above this are refused from their header
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # what Pillow may open for a visitor (JPEG: MPO too)
UNREADABLE = {
    "empty": "The image file is empty (0 bytes). Upload it again, or choose another file.",
    "format": "This file is not an image, or not in a format this app reads. Use a JPEG, PNG, WebP, GIF, BMP "
              "or TIFF file.",
    "corrupt": "The image file is corrupt or truncated ({detail}). Save it again and upload the new file.",
}


def image_header(path: str | Path) -> ImageHeader:
    """Format and displayed size from the file's header, without decoding (milliseconds, no pixel memory).

    Raises UserError for an empty, unknown, unsupported or corrupt file.
    """
    try:
        return read_header(path, FORMATS)
    except ImageFileError as e:
        raise UserError(UNREADABLE[e.reason].format(detail=e.detail)) from None


def limits(max_pixels: int = MAX_PIXELS):
    """The library's IMAGE_LIMITS with this app's pixel cap (the --max-pixels flag)."""
    return dataclasses.replace(IMAGE_LIMITS, max_pixels=max_pixels)


def check_header(header: ImageHeader, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse images without pixels and those the library's guard refuses (`check_pixels`): non-JPEG images
    above `max_pixels`, JPEGs above IMAGE_LIMITS.max_jpeg_pixels."""
    w, h, fmt = header.width, header.height, header.format
    if w == 0 or h == 0:
        raise UserError(f"The image has no pixels ({w}x{h}).")
    try:
        check_pixels(header, limits(max_pixels), reduced=True)
    except ImageFileError:
        if fmt in REDUCED_ON_DECODE:
            raise UserError(f"The image is {w:,}x{h:,} pixels, larger than this app can decode safely. "
                            "Downscale it first.") from None
        raise UserError(f"The image is {w:,}x{h:,} pixels ({header.pixels / 1e6:.0f} MP). {fmt} images "
                        f"above {max_pixels / 1e6:.0f} MP are too large for this app: downscale it, or "
                        "save it as JPEG (large JPEGs are fine).") from None


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
        rgb = load_image(path, max_side=max_side, limits=limits(max_pixels))
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
    too_large = len(data) > IMAGE_LIMITS.inline_bytes * 4 // 3 + 4
    if not head.startswith("data:") or ";base64" not in head or too_large:
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
