"""The training-free benchmarks' class names as the peers' released code spells them, with synonyms.

`peer_class_names(peer, dataset)` gives, per class of the dataset (in its label order), the text queries
that stand for it; a class scores the max over its queries. SCLIP's `configs/cls_*.txt` (which NACLIP's
configs name too) give VOC's background 26 words and "person" / "tv monitor" synonyms and write some names
without spaces ("pottedplant", "chestofdrawers", "trafficlight"); ClearCLIP's VOC21 says "background";
ProxyCLIP's lists drop the person and tv synonyms and shorten COCO-Object's background. A dataset a peer
ships no list for falls back to SCLIP's (ClearCLIP and ProxyCLIP say their code builds on SCLIP's).
"""

from __future__ import annotations

from ..vocab import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    COCO_CLASSES,
    COCO_STUFF_CLASSES,
    PASCAL_CONTEXT_CLASSES,
)

# SCLIP's background for VOC21 and COCO-Object (also ProxyCLIP's for VOC21)
BACKGROUND_WORDS = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk", "bed",
    "building", "cloud", "lamp", "door", "window", "wardrobe", "ceiling", "shelf", "curtain", "stair",
    "floor", "hill", "rail", "fence",
)
PROXYCLIP_OBJECT_BACKGROUND = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk", "bed",
    "building", "cloud", "floor", "hill", "rail",
)
PERSON = ("person", "person in shirt", "person in jeans", "person in dress", "person in sweater",
          "person in skirt", "person in jacket")
TV = ("television monitor", "tv monitor", "monitor", "television", "screen")
VOC20 = (
    "aeroplane", "bicycle", "bird", "ship", "bottle", "bus", "car", "cat", "chair", "cow", "table", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
DATASETS = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")
PEERS = ("sclip", "naclip", "clearclip", "proxyclip")


def _one(names) -> tuple[tuple[str, ...], ...]:
    return tuple((n,) if isinstance(n, str) else tuple(n) for n in names)


def _no_spaces(names) -> tuple[tuple[str, ...], ...]:
    return tuple((n.replace(" ", ""),) for n in names)


_SCLIP_VOC20 = _one(PERSON if n == "person" else TV if n == "tvmonitor" else n for n in VOC20)
_SCLIP = {
    "voc21": (BACKGROUND_WORDS, *_SCLIP_VOC20),
    "voc20": _SCLIP_VOC20,
    "context60": _one(PASCAL_CONTEXT_CLASSES),
    "context59": _one(PASCAL_CONTEXT_CLASSES[1:]),
    "coco_object": (BACKGROUND_WORDS, (*PERSON, "body"), *_one(COCO_CLASSES[1:])),
    "coco_stuff": _no_spaces(COCO_STUFF_CLASSES),
    "cityscapes": _no_spaces(CITYSCAPES_CLASSES),
    "ade20k": _no_spaces(ADE20K_CLASSES),
}
_OWN = {
    "clearclip": {"voc21": (("background",), *_one(VOC20))},
    "proxyclip": {"voc21": (BACKGROUND_WORDS, *_one(VOC20)), "voc20": _one(VOC20),
                  "coco_object": (PROXYCLIP_OBJECT_BACKGROUND, *_one(COCO_CLASSES))},
}


def peer_class_names(peer: str, dataset: str) -> tuple[tuple[str, ...], ...]:
    """Per class of `dataset` (a DATASETS key), the queries `peer` (a PEERS key) uses for it."""
    if peer not in PEERS or dataset not in DATASETS:
        raise ValueError(f"peer must be one of {PEERS} and dataset one of {DATASETS}; got {peer!r}, "
                         f"{dataset!r}")
    return _OWN.get(peer, {}).get(dataset, _SCLIP[dataset])
