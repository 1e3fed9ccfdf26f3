"""Checks on an untrusted image file from its header alone, before `load_image` decodes it.

`load_image` decodes JPEGs at a reduced size (the decoder itself downscales), but every other format is
decoded in full before it can be made smaller, so a 20000x20000 PNG costs 1.2 GB however small the
result. A server that decodes uploads reads the header first:

    from webapp.image_guard import check_image_file
    fmt, (w, h) = check_image_file(path, max_pixels=50_000_000)   # raises ImageFileError, says why
    rgb = load_image(path, max_side=1024)
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from denseclip.data.transforms import MAX_DECODE_PIXELS, decode_limits

__all__ = ["ImageFileError", "image_header", "check_image_file", "DOWNSCALED_ON_DECODE"]

# Formats whose decoder reduces the image while decoding (load_image's draft mode): no full-size pixels.
DOWNSCALED_ON_DECODE = ("JPEG", "MPO")



class ImageFileError(ValueError):
    """The file is not an image this code will decode; the message says why, for the person who sent it."""


def image_header(path: str | Path) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) from the file header without decoding the pixels.

    The size is as displayed: swapped for EXIF orientations that rotate by 90 degrees (as load_image does).
    Raises ImageFileError for an empty, unknown, corrupt or undecodably large (> MAX_DECODE_PIXELS) file.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ImageFileError("The image file is empty (0 bytes).")
    with decode_limits():
        try:
            with Image.open(path) as im:
                w, h = int(im.width), int(im.height)
                try:
                    if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF: shown rotated by 90 degrees
                        w, h = h, w
                except Exception:  # a broken EXIF block is load_image's business, not ours
                    pass
                return str(im.format), (w, h)
        except UnidentifiedImageError:
            raise ImageFileError("This file is not an image, or its format is not supported "
                                 "(use JPEG, PNG, WebP, BMP, GIF or TIFF).") from None
        except Image.DecompressionBombError:
            raise ImageFileError(f"The image is larger than {MAX_DECODE_PIXELS:,} pixels and cannot be "
                                 "decoded safely; downscale it first.") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageFileError(f"The image file is corrupt or truncated ({e}).") from None


def check_image_file(path: str | Path, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """image_header, and refuse images without pixels or, unless JPEG, above `max_pixels` (full decode)."""
    fmt, (w, h) = image_header(path)
    if w == 0 or h == 0:
        raise ImageFileError(f"The image has no pixels ({w}x{h}).")
    if fmt not in DOWNSCALED_ON_DECODE and w * h > max_pixels:
        raise ImageFileError(f"The image is {w:,}x{h:,} pixels ({w * h / 1e6:.0f} MP). {fmt} images above "
                             f"{max_pixels / 1e6:.0f} MP must be decoded in full, which this server does not "
                             "do; downscale it (or save it as JPEG, which is decoded at a reduced size).")
    return fmt, (w, h)
