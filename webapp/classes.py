"""The class-name box: splitting, limits, cleaning, and the preset class lists written as words.

The box is untrusted text: it is never read as a file name or a dataset key. Names are separated by
commas, semicolons, tabs or new lines. Preset lists use the benchmarks' classes, spelled as CLIP reads
words ("dining table", not "diningtable"; "wall", not "wall-other").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from denseclip.vocab import ADE20K_CLASSES, COCO_STUFF_CLASSES, PASCAL_VOC_CLASSES, clean_class_names

from .errors import Note, UserError

CUSTOM = "Custom"  # the class list a visitor types (not a preset)
MAX_CLASSES = 512
MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 40_000  # the whole box (COCO-Stuff's 171 names are ~1.6k characters)
SEPARATORS = re.compile(r"[,;\t\r\n]")

# Benchmark spellings -> words. Suffixes "-other"/"-stuff" mark COCO-Stuff's catch-all classes.
SPELLED_OUT = {
    "diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor",
    "playingfield": "playing field", "waterdrops": "water drops", "window-blind": "window blind",
    "ceiling-tile": "ceiling tile", "structural-other": "structure", "solid-other": "solid material",
    **{f"{surface}-{kind}": f"{adjective} {surface}"
       for surface in ("wall", "floor")
       for kind, adjective in (("brick", "brick"), ("concrete", "concrete"), ("panel", "panelled"),
                               ("stone", "stone"), ("tile", "tiled"), ("wood", "wooden"),
                               ("marble", "marble"))},
}


def as_words(name: str) -> str:
    """A benchmark class name as words: SPELLED_OUT, else without "-other"/"-stuff", else as is."""
    name = " ".join(name.split())
    if name in SPELLED_OUT:
        return SPELLED_OUT[name]
    for suffix in ("-other", "-stuff"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


PRESETS: dict[str, tuple[str, ...]] = {
    label: clean_class_names([as_words(n) for n in names], dedupe=True)
    for label, names in (("ADE20K (150)", ADE20K_CLASSES), ("COCO-Stuff (171)", COCO_STUFF_CLASSES),
                         ("Pascal VOC (21)", PASCAL_VOC_CLASSES))
}


def preset_text(names: Sequence[str]) -> str:
    """The class box's text for a list of names."""
    return ", ".join(clean_class_names(names))


def preset_of(text: str, custom: str = CUSTOM) -> str:
    """The preset whose list the class box holds, else `custom`."""
    return next((name for name, names in PRESETS.items() if text == preset_text(names)), custom)


def switch_preset(preset: str, text: str, saved: str, custom: str = CUSTOM) -> tuple[str, str]:
    """The class box after picking `preset`, and the visitor's own names kept for when they pick `custom`
    again: (new text, saved)."""
    if preset == custom:
        return saved, saved
    if preset_of(text, custom) == custom:
        saved = text
    return preset_text(PRESETS[preset]), saved


def parse_class_names(text: str | None, allow_empty: bool = False) -> tuple[tuple[str, ...], list[Note]]:
    """The class box -> (cleaned unique names, notes). Control characters are dropped; duplicates
    (case-insensitive) are merged, keeping the first. Limits: MAX_TEXT_CHARS characters, MAX_CLASSES
    names of at most MAX_NAME_CHARS characters each."""
    text = "" if text is None else text
    if not isinstance(text, str):
        raise UserError(f"Class names must be text, not {type(text).__name__}.")
    if len(text) > MAX_TEXT_CHARS:
        raise UserError(f"The class list is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,}. "
                        "Shorten it, or split it over several runs.")
    raw = []
    for piece in SEPARATORS.split(text):
        piece = "".join(c for c in piece if not unicodedata.category(c).startswith("C") or c.isspace())
        if piece.strip():
            raw.append(piece)
    if not raw:
        if allow_empty:
            return (), []
        raise UserError("Type at least one class name, e.g. 'sky, tree, person' (separate names with "
                        "commas, semicolons or new lines), or pick a class list.")
    for i, name in enumerate(raw):
        if len(name.strip()) > MAX_NAME_CHARS:
            raise UserError(f"Class name {i + 1} is {len(name.strip()):,} characters long "
                            f"('{name.strip()[:40]}...'); keep each name under {MAX_NAME_CHARS} characters.")
    names = clean_class_names(raw, dedupe=True)
    notes = []
    if len(names) < len(raw):
        keys = [clean_class_names([n])[0].casefold() for n in raw]  # what dedupe=True merges on
        dups = list(dict.fromkeys(k for i, k in enumerate(keys) if k in keys[:i]))
        notes.append(Note(f"Merged {len(raw) - len(names)} repeated class name(s): "
                          f"{', '.join(repr(d) for d in dups[:8])}{' ...' if len(dups) > 8 else ''}."))
    if len(names) > MAX_CLASSES:
        raise UserError(f"{len(names)} class names given; the limit is {MAX_CLASSES}.")
    return names, notes


def match_classes(model_names: Sequence[str], names: Sequence[str]) -> tuple[list[int], list[str]]:
    """Indices into a checkpoint's class names of the typed names, and the names it does not have.

    Case-insensitive; a typed name also matches a benchmark spelling of the same words ("dining table"
    matches "diningtable", "wall" matches "wall-other"). The first class of a name wins.
    """
    index: dict[str, int] = {}
    for i, n in enumerate(model_names):
        for key in (" ".join(n.split()).casefold(), as_words(n).casefold()):
            index.setdefault(key, i)
    idx, unknown = [], []
    for n in names:
        i = index.get(n.casefold())
        (unknown.append(n) if i is None else idx.append(i))
    return idx, unknown
