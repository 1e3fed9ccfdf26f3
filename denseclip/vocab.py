"""Class-name vocabularies of the standard benchmarks, and CLIP prompt templates.

The class tuples follow mmsegmentation's (order = class index = training label), so that checkpoints
trained with mmseg (the DenseCLIP authors') line up with these names. ``get_class_names`` /
``get_templates`` turn user input (a key, a file, a string, a list) into validated tuples. Importing is
cheap: open_clip (the ImageNet templates) is imported on first use of ``IMAGENET_TEMPLATES`` /
``TEMPLATE_SETS`` / ``get_templates``.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "COCO_OBJECT_CLASSES",
    "COCO_STUFF_CLASSES",
    "DATASET_CLASSES",
    "IMAGENET_TEMPLATES",  # noqa: F822 (lazy, see __getattr__)
    "PASCAL_CONTEXT59_CLASSES",
    "PASCAL_CONTEXT_CLASSES",
    "PASCAL_VOC_CLASSES",
    "SIMPLE_TEMPLATES",
    "TEMPLATE_SETS",  # noqa: F822 (lazy, see __getattr__)
    "clean_class_names",
    "get_class_names",
    "get_templates",
    "validate_template",
]

# ADE20K (SceneParsing, 150 classes), mmseg ``ADE20KDataset.CLASSES``. Label 0 ("other") is not a
# class: the dataset uses reduce_zero_label, so raw label k is class k-1.
# Note: mmseg spells index 7 as 'bed ' WITH a trailing space (checked in both mmseg 0.x
# ``core/evaluation/class_names.py::ade_classes`` and 1.x ``datasets/ade.py``), so checkpoints'
# meta["CLASSES"] carry it too. We keep the exact string here; CLIP's tokenizer strips whitespace,
# so the text embedding is the same as for 'bed'. ``get_class_names("ade20k")`` returns cleaned
# names ('bed').
ADE20K_CLASSES: tuple[str, ...] = (
    # 0-9
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass",
    # 10-19
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    # 20-29
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    # 30-39
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    # 40-49
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace",
    # 50-59
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway",
    # 60-69
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    # 70-79
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel",
    # 80-89
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver",
    # 90-99
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet",
    # 100-109
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool",
    # 110-119
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    # 120-129
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    # 130-139
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    # 140-149
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock",
    "flag",
)  # fmt: skip

# COCO-Stuff 164k (171 classes), mmseg ``COCOStuffDataset.CLASSES``: the 80 COCO "things" in
# category-id order, then the 91 "stuff" classes (COCO ids 92..182) in id order.
COCO_STUFF_CLASSES: tuple[str, ...] = (
    # things 0-79
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
    # stuff 80-170
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other",
    "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)  # fmt: skip

# COCO detection / instance segmentation (80 classes): the same names and order as torchvision /
# mmdet, which is exactly the "things" head of COCO-Stuff.
COCO_CLASSES: tuple[str, ...] = COCO_STUFF_CLASSES[:80]

# Original COCO category ids of COCO_CLASSES (1..90 with 10 unused ids: 12, 26, 29, 30, 45, 66, 68,
# 69, 71, 83). Needed to write detections back in COCO json format.
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
)  # fmt: skip

# PASCAL VOC 2012 (21 classes incl. background at 0), mmseg ``PascalVOCDataset.CLASSES``.
PASCAL_VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# PASCAL Context (60 classes incl. background at 0), mmseg ``PascalContextDataset.CLASSES``:
# background, then the 59 classes in alphabetical order. (Very early mmseg forks used a different,
# VOC-first order; the released datasets and checkpoints use this one.)
PASCAL_CONTEXT_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer",
    "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip

# PASCAL Context 59 (mmseg ``PascalContextDataset59``): the same without background, which is
# ignored via reduce_zero_label.
PASCAL_CONTEXT59_CLASSES: tuple[str, ...] = PASCAL_CONTEXT_CLASSES[1:]

# COCO-Object (81 classes): background (every stuff class and unlabelled pixels) then the 80 COCO things,
# as the training-free benchmarks convert COCO-Stuff (GroupViT's / TCL's cvt_coco_object).
COCO_OBJECT_CLASSES: tuple[str, ...] = ("background", *COCO_CLASSES)

# Cityscapes (19 evaluation classes, mmseg ``CityscapesDataset.CLASSES``, the *_labelTrainIds.png order).
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip

DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    "ade20k": ADE20K_CLASSES,
    "coco-stuff": COCO_STUFF_CLASSES,
    "voc": PASCAL_VOC_CLASSES,
    "pascal-context": PASCAL_CONTEXT_CLASSES,
    "pascal-context-59": PASCAL_CONTEXT59_CLASSES,
    "coco": COCO_CLASSES,
}

# Other spellings accepted by get_class_names (after lower-casing and "_"/" " -> "-").
_DATASET_ALIASES = {
    "ade": "ade20k",
    "ade-20k": "ade20k",
    "cocostuff": "coco-stuff",
    "coco-stuff-164k": "coco-stuff",
    "pascal-voc": "voc",
    "voc2012": "voc",
    "pascal-context-60": "pascal-context",
    "pascal-context59": "pascal-context-59",
}


def _dataset_key(name: str) -> str | None:
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = _DATASET_ALIASES.get(key, key)
    return key if key in DATASET_CLASSES else None


def clean_class_names(names: Iterable[str], dedupe: bool = False) -> tuple[str, ...]:
    """Normalise class names: NFC unicode, strip, collapse runs of whitespace to one space.

    Args:
        names: the names, in class-index order.
        dedupe: if True, drop later duplicates (case-insensitive, after cleaning), keeping the first;
            otherwise a duplicate is an error (two classes with the same text are indistinguishable
            to a text encoder).

    Raises:
        TypeError: a single string or a non-string entry.
        ValueError: a blank name (its position is given), a duplicate, or no names at all.
    """
    if isinstance(names, (str, bytes)):
        raise TypeError("clean_class_names expects a list of names, not one string; "
                        "use get_class_names('a, b, c') to split a comma-separated string")
    cleaned: list[str] = []
    seen: dict[str, tuple[int, str]] = {}  # casefolded name -> (position, text) of its first occurrence
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"class name at position {i} is {type(name).__name__} {name!r}, expected str")
        text = " ".join(unicodedata.normalize("NFC", name).split())
        if not text:
            raise ValueError(f"class name at position {i} is empty or blank ({name!r}); remove it or name it")
        key = text.casefold()
        if key in seen:
            if dedupe:
                continue
            first_pos, first_text = seen[key]
            raise ValueError(f"duplicate class name: {text!r} at position {i} repeats {first_text!r} at "
                             f"position {first_pos} (case-insensitive); rename one, or pass dedupe=True "
                             "to keep only the first")
        seen[key] = (i, text)
        cleaned.append(text)
    if not cleaned:
        raise ValueError("no class names given")
    return tuple(cleaned)


def _read_names_file(path: Path) -> list[str]:
    """One name per line (UTF-8, BOM tolerated); blank lines and ``#`` comments are skipped."""
    names = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    if not names:
        raise ValueError(f"class-name file {str(path)!r} has no names (only blank lines or # comments)")
    return names


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # name too long, NUL byte, ...: not a usable path
        return False


def get_class_names(spec: str | os.PathLike | Sequence[str], dedupe: bool = False) -> tuple[str, ...]:
    """Resolve class names from any of the usual forms, cleaned by :func:`clean_class_names`.

    Args:
        spec: one of
            * a dataset key (case-insensitive): ``"ade20k"``, ``"coco-stuff"``, ``"voc"``,
              ``"pascal-context"``, ``"pascal-context-59"``, ``"coco"`` (see ``DATASET_CLASSES``);
            * a path to a UTF-8 text file with one name per line (blank lines and ``#`` comments
              skipped; commas inside a line are part of the name);
            * a string of names separated by commas and/or newlines (``"cat, dog, grass"``);
            * a list / tuple of names.
        dedupe: merge duplicate names instead of raising.

    Returns:
        tuple of cleaned names, in class-index order.
    """
    if isinstance(spec, os.PathLike):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"class-name file {str(path)!r} does not exist")
        return clean_class_names(_read_names_file(path), dedupe=dedupe)
    if isinstance(spec, str):
        key = _dataset_key(spec)
        if key is not None:
            return clean_class_names(DATASET_CLASSES[key], dedupe=dedupe)
        if "\n" not in spec and _is_file(spec):
            return clean_class_names(_read_names_file(Path(spec)), dedupe=dedupe)
        if "," in spec or "\n" in spec:
            pieces = [p for chunk in spec.splitlines() for p in chunk.split(",")]
            # empty pieces from a trailing comma or blank lines are skipped, not errors
            return clean_class_names([p for p in pieces if p.strip()], dedupe=dedupe)
        if os.sep in spec or "/" in spec or spec.lower().endswith(".txt"):
            raise FileNotFoundError(f"class-name file {spec!r} does not exist")
        raise ValueError(
            f"unknown dataset {spec!r}; valid keys: {', '.join(DATASET_CLASSES)}. "
            "Otherwise pass a path to a text file, comma-separated names ('cat, dog'), or a list"
        )
    if isinstance(spec, Iterable):
        return clean_class_names(list(spec), dedupe=dedupe)
    raise TypeError(f"cannot get class names from {type(spec).__name__}; "
                    "pass a dataset key, a file path, a comma-separated string or a list of names")


# ---------------------------------------------------------------------------------------- templates

# A small ensemble that suits scene parsing (objects and stuff in context), all with one "{}".
SIMPLE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of the {}.",
    "a close-up photo of the {}.",
    "there is a {} in the scene.",
)


def validate_template(template: Any) -> str:
    """Check that ``template`` is a string with exactly one ``{}`` placeholder and no other braces."""
    if not isinstance(template, str):
        raise TypeError(f"a prompt template must be a str, got {type(template).__name__} {template!r}")
    if template.count("{}") != 1 or template.count("{") != 1 or template.count("}") != 1:
        raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}' where the class "
                         "name goes, and no other braces (e.g. 'a photo of a {}.')")
    return template


def _load_imagenet_templates() -> tuple[str, ...]:
    # open_clip stores the 80 CLIP ImageNet templates as callables; calling them with "{}" gives
    # back format strings.
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(validate_template(t("{}")) for t in OPENAI_IMAGENET_TEMPLATES)


_lazy: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    # PEP 562 lazy attributes: importing open_clip costs seconds, most users of this module
    # (configs, datasets) never need the ImageNet templates.
    if name == "IMAGENET_TEMPLATES":
        if name not in _lazy:
            _lazy[name] = _load_imagenet_templates()
        return _lazy[name]
    if name == "TEMPLATE_SETS":
        if name not in _lazy:
            _lazy[name] = {
                "single": ("a photo of a {}.",),
                "simple": SIMPLE_TEMPLATES,
                "imagenet": __getattr__("IMAGENET_TEMPLATES"),
            }
        return _lazy[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_templates(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Resolve prompt templates.

    Args:
        spec: a key of ``TEMPLATE_SETS`` (``"single"``, ``"simple"``, ``"imagenet"``;
            case-insensitive), a single template string containing ``"{}"``, or a list of templates.

    Returns:
        tuple of validated templates (each with exactly one ``"{}"``).
    """
    sets: dict[str, tuple[str, ...]] = __getattr__("TEMPLATE_SETS")
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in sets:
            return sets[key]
        if "{" in spec or "}" in spec:
            return (validate_template(spec),)
        raise ValueError(f"unknown template set {spec!r}; valid: {', '.join(sets)}, "
                         "or a template like 'a photo of a {}.' (or a list of them)")
    templates = tuple(validate_template(t) for t in spec)
    if not templates:
        raise ValueError("no prompt templates given")
    return templates
