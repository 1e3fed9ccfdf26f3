"""What a finished request shows and offers for download: colours, mask layers, score-map gallery,
coverage chart, the label map (PNG) and the per-class results (JSON). Drawing comes from `denseclip.viz`.

    folders = OutputFolders()
    out = render(seg, folders.new())          # seg from pipeline.segment
    out.gallery, out.coverage_image, out.label_map (path), out.results (path), out.record (the JSON)
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch.nn.functional as F
from PIL import Image

from denseclip import viz
from denseclip.render import BACKGROUND
from denseclip.vocab import ADE20K_CLASSES, clean_class_names

if TYPE_CHECKING:
    from .pipeline import Prediction, Segmentation

MAX_GALLERY = 12  # score maps shown (largest coverage first); the JSON has every class
MAX_LEGEND = 40  # classes drawn as separate overlay layers; the rest still get their colour
GALLERY_SIDE = 384  # score maps are drawn 300 px tall: computed at about this size
COVERAGE_TOP = 20  # bars in the coverage chart


def class_palette(names: Sequence[str]) -> np.ndarray:
    """(K, 3) uint8 colours: the ADE20K palette for the ADE20K classes (the convention of the paper's
    figures), vivid tab20 colours for up to 20 classes, else viz.make_palette (ADE20K's, then generated)."""
    k = len(names)
    if k > 20 or tuple(names) == clean_class_names(ADE20K_CLASSES):
        return viz.make_palette(k)
    import matplotlib

    tab = matplotlib.colormaps["tab20"].colors  # pairs (dark, light): the dark ten first
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return (np.asarray([tab[i] for i in order[:k]]) * 255).round().astype(np.uint8)


def hex_color(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


@dataclass
class ClassStats:
    counts: np.ndarray  # (K,) pixels per class
    coverage: np.ndarray  # (K,) fraction of all pixels
    peak: np.ndarray  # (K,) the largest score / probability of each class's map
    order: np.ndarray  # (K,) class indices: coverage first, then peak score


def class_stats(pred: Prediction) -> ClassStats:
    labels = pred.labels
    counts = np.bincount(labels[labels != BACKGROUND], minlength=len(pred.names))
    cov = counts / labels.size
    peak = pred.maps.flatten(1).amax(1).numpy()
    return ClassStats(counts, cov, peak, np.lexsort((-peak, -cov)))


def mask_layers(rgb: np.ndarray, labels: np.ndarray, names: Sequence[str], palette: np.ndarray,
                order: Sequence[int], opacity: float, display_opacity: float = 1.0,
                max_layers: int = MAX_LEGEND) -> tuple[np.ndarray, list, dict[str, str]]:
    """The image and one mask (alpha = opacity) per class present, largest first; colours as hex.

    The value of an annotated-image widget. Classes beyond `max_layers` are painted into the base image
    (same colours), so nothing is hidden. `display_opacity`: the opacity the widget draws masks at (the
    masks are scaled up so that the shown opacity is `opacity`).
    """
    alpha = float(np.clip(opacity, 0.0, 1.0))
    counts = np.bincount(labels[labels != BACKGROUND], minlength=len(names))
    present = [int(k) for k in order if counts[k] > 0]
    shown, rest = present[:max_layers], present[max_layers:]
    base = rgb
    if rest:
        mask = np.isin(labels, rest)
        base = rgb.copy()
        base[mask] = (rgb[mask] * (1 - alpha) + palette[labels[mask]] * alpha).round().astype(np.uint8)
    level = min(1.0, alpha / display_opacity)
    anns = [((labels == k).astype(np.float32) * level, names[k]) for k in shown]
    return base, anns, {names[k]: hex_color(palette[k]) for k in shown}


def score_gallery(pred: Prediction, order: Sequence[int], cov: np.ndarray,
                  max_maps: int = MAX_GALLERY) -> list[tuple[Image.Image, str]]:
    """Heatmaps with colour bars of the `max_maps` classes covering most of the image."""
    idx = [int(k) for k in order[:max_maps]]
    maps = pred.maps[idx].float()
    h, w = maps.shape[1:]
    s = min(1.0, GALLERY_SIDE / max(h, w))  # drawn 300 px tall: no need to colour more pixels than that
    if s < 1.0:
        maps = F.interpolate(maps[None], size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                             align_corners=False)[0]
    names = [pred.names[k] for k in idx]
    items = viz.scoremap_gallery(maps, names)
    return [(img, f"{pred.names[k]} · {cov[k] * 100:.1f}%") for (img, _), k in zip(items, idx)]


def coverage_image(cov: np.ndarray, names: Sequence[str], palette: np.ndarray,
                   top: int = COVERAGE_TOP) -> Image.Image:
    """viz.coverage_figure of the `top` largest classes (long names shortened), titled, as an image."""
    short = [n if len(n) <= 28 else n[:27] + "…" for n in names]
    fig = viz.coverage_figure(cov, short, palette, top=top)
    fig.suptitle(f"Pixels per class{f' (top {top})' if (cov > 0).sum() > top else ''}", fontsize=11)
    return viz.figure_to_image(fig)


def label_map_image(labels: np.ndarray, palette: np.ndarray) -> tuple[Image.Image, str]:
    """The label map as a lossless PNG image and a description of its encoding (for the JSON).

    Up to 255 classes: an 8-bit palette PNG (255 = unlabelled); more: 16-bit grayscale (65535 = unlabelled).
    """
    valid = labels != BACKGROUND
    if len(palette) <= 255:
        png = viz.label_map_png(np.where(valid, labels, 255).astype(np.uint8), palette, ignore_index=255)
        return png, "8-bit palette PNG: pixel value = index into `classes`, 255 = unlabelled"
    png = viz.labels_to_png16(np.where(valid, labels, 65535))
    return png, "16-bit grayscale PNG: pixel value = index into `classes`, 65535 = unlabelled"


def file_stem(name: str) -> str:
    """A safe file-name stem from an uploaded file's name (at most 60 characters of [A-Za-z0-9_-])."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem)[:60].strip("_")
    return stem or "image"


class OutputFolders:
    """A folder for the files offered for download; request folders older than `max_age` s are removed."""

    def __init__(self, max_age: float = 3600):
        self.root = Path(tempfile.mkdtemp(prefix="denseclip-app-"))
        self.max_age = max_age
        atexit.register(shutil.rmtree, self.root, True)

    def new(self) -> Path:
        now = time.time()
        for old in self.root.iterdir():
            try:
                if now - old.stat().st_mtime > self.max_age:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        path = self.root / uuid.uuid4().hex
        path.mkdir()
        return path


@dataclass
class Rendered:
    stats: ClassStats
    palette: np.ndarray  # (K, 3) uint8
    gallery: list[tuple[Image.Image, str]]
    coverage_image: Image.Image
    label_map: Path  # the PNG written
    results: Path  # the JSON written
    record: dict  # the JSON's content
    seconds: float  # the whole request, up to writing the label map


def render(seg: Segmentation, folder: Path) -> Rendered:
    """Draw the gallery and the coverage chart, write the label map and the JSON into `folder`."""
    pred = seg.pred
    stats = class_stats(pred)
    palette = class_palette(pred.names)
    with warnings.catch_warnings():  # names in scripts the default font lacks are drawn as boxes
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        gallery = score_gallery(pred, stats.order, stats.coverage)
        cov_img = coverage_image(stats.coverage, pred.names, palette)
    stem = file_stem(seg.image_info["name"])
    png, encoding = label_map_image(pred.labels, palette)
    png_path = folder / f"{stem}_labels.png"
    png.save(png_path)
    seconds = time.perf_counter() - seg.started
    record = {
        "model": seg.spec.label, "untrained": seg.spec.untrained, "image": seg.image_info,
        "map_kind": pred.map_kind, "seconds": round(seconds, 3),
        "timing": {"model_load": round(seg.load_seconds, 4), **pred.timing}, "info": pred.info,
        "label_map": {"file": png_path.name, "encoding": encoding, "size": list(pred.labels.shape)},
        "classes": [{"index": i, "name": n, "color": hex_color(palette[i]), "pixels": int(stats.counts[i]),
                     "fraction": round(float(stats.coverage[i]), 6), "max": round(float(stats.peak[i]), 5),
                     "mean": round(float(pred.maps[i].mean()), 5)} for i, n in enumerate(pred.names)],
        "notes": seg.notes,
    }
    json_path = folder / f"{stem}_results.json"
    json_path.write_text(json.dumps(record, indent=2, ensure_ascii=False), "utf-8")
    return Rendered(stats, palette, gallery, cov_img, png_path, json_path, record, seconds)
