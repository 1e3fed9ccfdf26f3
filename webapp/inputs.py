"""What a web user sends: the class-name box and an uploaded image file, checked and bounded.

Everything here raises `UserError` (a ValueError) with a message meant to be shown as is.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from denseclip.data.transforms import load_image
from denseclip.vocab import clean_class_names

from .image_guard import ImageFileError, check_image_file

MAX_SIDE = 1024  # decoded images are downscaled to this long side (outputs are at this size)
MAX_PIXELS = 50_000_000  # non-JPEG images above this are refused from their header (full decode needed)
MAX_CLASSES = 512
MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 40_000  # the whole class box (COCO-Stuff's 171 names are ~1.6k characters)


class UserError(ValueError):
    """A problem with what the person gave us; its message is shown in the UI as is."""


# ------------------------------------------------------------------------------------------ class names
def preset_text(names: Sequence[str]) -> str:
    """The class box's text for a preset (cleaned names, comma separated; newlines if a name has a comma)."""
    names = clean_class_names(names)
    return ("\n" if any("," in n for n in names) else ", ").join(names)


def parse_class_names(text: str | None, allow_empty: bool = False) -> tuple[tuple[str, ...], list[str]]:
    """The class box -> (cleaned unique names, notes for the person). Comma- and/or newline-separated.

    Never reads files or dataset keys (unlike vocab.get_class_names): the box is untrusted input.
    Control characters are dropped; duplicates (case-insensitive) are merged, keeping the first.
    At most MAX_TEXT_CHARS characters, MAX_CLASSES names of at most MAX_NAME_CHARS characters.
    """
    text = "" if text is None else text
    if not isinstance(text, str):
        raise UserError(f"class names must be text, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise UserError(f"The class list is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,}. "
                        "Shorten it or split it over several runs.")
    pieces = [p for line in text.splitlines() for p in line.split(",")]
    raw = []
    for piece in pieces:
        piece = "".join(c for c in piece if not unicodedata.category(c).startswith("C") or c.isspace())
        if piece.strip():
            raw.append(piece)
    if not raw:
        if allow_empty:
            return (), []
        raise UserError("Type at least one class name (comma or newline separated, e.g. 'sky, tree, "
                        "person'), or pick a class list preset.")
    for i, name in enumerate(raw):
        if len(name.strip()) > MAX_NAME_CHARS:
            raise UserError(f"Class name {i + 1} is {len(name.strip()):,} characters long "
                            f"('{name.strip()[:40]}...'); keep each name under {MAX_NAME_CHARS} characters.")
    names = clean_class_names(raw, dedupe=True)
    notes = []
    if len(names) < len(raw):
        seen, dups = set(), []
        for n in raw:
            key = clean_class_names([n])[0].casefold()  # the key clean_class_names(dedupe=True) merges on
            if key in seen and key not in dups:
                dups.append(key)
            seen.add(key)
        notes.append(f"Merged {len(raw) - len(names)} duplicate class name(s) (kept the first of each): "
                     f"{', '.join(repr(d) for d in dups[:8])}{' ...' if len(dups) > 8 else ''}.")
    if len(names) > MAX_CLASSES:
        raise UserError(f"{len(names)} class names given; the limit is {MAX_CLASSES}.")
    return names, notes


# ----------------------------------------------------------------------------------------------- images
def scrub_path(message: str, path: Path) -> str:
    """Server paths out of a message: the file's own path -> its name, its folder -> '<uploads>'."""
    return message.replace(str(path), path.name).replace(str(path.parent), "<uploads>")


def read_image(path: str | Path, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Check the header (image_guard), then decode with load_image (any mode, EXIF rotation, downscale).

    Returns the RGB uint8 array (long side <= max_side) and facts about the file for the JSON:
    name, format, original_size [H, W], size [H, W], downscaled.
    """
    path = Path(path)
    try:
        fmt, (w, h) = check_image_file(path, max_pixels)
    except ImageFileError as e:
        raise UserError(str(e)) from None
    try:
        rgb = load_image(path, max_side=max_side)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"Could not read the image: {scrub_path(str(e), path)}") from None
    except MemoryError:
        raise UserError("The image is too large to decode in the memory this server has.") from None
    info = {"name": path.name, "format": fmt, "original_size": [h, w], "size": list(rgb.shape[:2]),
            "downscaled": max(w, h) > max_side}
    return rgb, info
