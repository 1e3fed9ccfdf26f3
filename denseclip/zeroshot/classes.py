"""Class names with synonyms: what the user names, and the text queries that stand for each class.

    ["sky", "tree"]                                   one query per class
    ["sky", ("person", "man", "woman")]               synonyms: the first is the class's name
    {"background": ["sky", "wall"], "cat": "cat"}     a mapping: class name -> its queries

A class scores the max over its queries (as SCLIP, NACLIP, ClearCLIP and ProxyCLIP do for VOC's
"background" and for "person"); background pseudo-classes are queries that belong to no class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..vocab import clean_class_names


@dataclass(frozen=True)
class ClassQueries:
    """names (K) the classes; texts (U) the distinct query texts to encode; per query row q (Q >= K):
    text_index[q] into `texts` and query_class[q] its class (K for background pseudo-classes)."""

    names: tuple[str, ...]
    texts: tuple[str, ...]
    text_index: tuple[int, ...]
    query_class: tuple[int, ...]
    background: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def class_tensor(self) -> torch.Tensor:
        return torch.tensor(self.query_class, dtype=torch.long)


def _entries(class_names) -> list[tuple[str, tuple[str, ...]]]:
    if isinstance(class_names, Mapping):
        items = list(class_names.items())
        return [(k, (v,) if isinstance(v, str) else tuple(v) or (k,)) for k, v in items]
    if isinstance(class_names, (str, bytes)):
        clean_class_names(class_names)  # raises the usual "a list, not one string" error
    out = []
    for i, entry in enumerate(class_names):
        if isinstance(entry, str):
            out.append((entry, (entry,)))
        elif isinstance(entry, Sequence) and entry and all(isinstance(s, str) for s in entry):
            out.append((entry[0], tuple(entry)))
        else:
            raise TypeError(f"class at position {i} is {entry!r}: give a name, or a list of synonyms "
                            "(strings)")
    return out


def build_queries(class_names, background: str | Sequence[str] | None = None,
                  dedupe: bool = False) -> ClassQueries:
    """Validated classes and queries (see the module doc); background: pseudo-class name(s) or None.

    Blank names raise; duplicate class names raise unless dedupe=True (the first is kept, with its
    synonyms); a background name that is also a class name or query raises."""
    entries = _entries(class_names)
    names = clean_class_names([name for name, _ in entries], dedupe=dedupe)  # errors name the position
    kept, seen = [], set()
    for name, synonyms in entries:
        key = clean_class_names([name])[0].casefold()
        if key not in seen:
            seen.add(key)
            kept.append(clean_class_names(synonyms, dedupe=True))
    bg = () if background is None else \
        clean_class_names([background] if isinstance(background, str) else background)
    words = {n.casefold() for n in names} | {q.casefold() for syn in kept for q in syn}
    clash = sorted({b for b in bg if b.casefold() in words})
    if clash:
        raise ValueError(f"background pseudo-class(es) {clash} are also class names; remove one")
    rows = [(q, k) for k, syn in enumerate(kept) for q in syn] + [(b, len(names)) for b in bg]
    texts = tuple(dict.fromkeys(q for q, _ in rows))
    position = {t: i for i, t in enumerate(texts)}
    # rows are ordered so that each class's first query comes first when there are no synonyms
    return ClassQueries(names, texts, tuple(position[q] for q, _ in rows), tuple(k for _, k in rows), bg)
