"""What a finished request shows and offers, written to the request's own folder (never shared with
another request): the segmentation picture, score-map panels, the label map (PNG), the results (JSON),
and the arrays that later clicks read (see results.py).

    folders = OutputFolders()
    out = render(seg, folders.new())      # seg from pipeline.segment
    out.segmentation, out.gallery, out.label_map, out.results: files; out.record: the JSON's content
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from denseclip import viz

from .drawing import UNLABELLED, class_palette, draw_segmentation, hex_color, label_points
from .pipeline import Segmentation
from .scoremaps import colour_bar, faint_photo, score_panel, value_range

MAX_GALLERY = 12  # score maps drawn per request (largest coverage first); any other one on demand
LABEL_MAP_MAX_PIXELS = 25_000_000  # the label map is written at the upload's size up to this


def file_stem(name: str) -> str:
    """A safe file-name stem from an uploaded file's name (at most 60 characters of [A-Za-z0-9_-])."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem)[:60].strip("_")
    return stem or "image"


class OutputFolders:
    """One new folder per request for the files offered; folders older than `max_age` s are removed."""

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
class ClassStats:
    counts: np.ndarray  # (K,) pixels per class
    coverage: np.ndarray  # (K,) fraction of all pixels (unlabelled pixels count for none)
    peak: np.ndarray  # (K,) each class's largest score
    order: np.ndarray  # (K,) class indices: coverage first, then peak score


def class_stats(labels: np.ndarray, maps: np.ndarray) -> ClassStats:
    counts = np.bincount(labels[labels != UNLABELLED], minlength=len(maps))
    cov = counts / labels.size
    peak = maps.reshape(len(maps), -1).max(1)
    return ClassStats(counts, cov, peak, np.lexsort((-peak, -cov)))


def label_map_image(labels: np.ndarray, palette: np.ndarray) -> tuple[Image.Image, str]:
    """The label map as a lossless PNG and its encoding: up to 255 classes an 8-bit palette PNG
    (255 = unlabelled), more a 16-bit grayscale PNG (65535 = unlabelled)."""
    valid = labels != UNLABELLED
    if len(palette) <= 255:
        png = viz.label_map_png(np.where(valid, labels, 255).astype(np.uint8), palette, ignore_index=255)
        return png, "8-bit palette PNG: pixel value = index into `classes`, 255 = unlabelled"
    png = viz.labels_to_png16(np.where(valid, labels, 65535))
    return png, "16-bit grayscale PNG: pixel value = index into `classes`, 65535 = unlabelled"


def caption(name: str, coverage: float) -> str:
    return f"{name} · {coverage * 100:.1f}%"


@dataclass
class Rendered:
    folder: Path
    segmentation: Path  # the picture: colours and names over the photo
    gallery: list[tuple[str, str]]  # (panel file, caption) of the MAX_GALLERY largest classes
    label_map: Path
    results: Path
    record: dict  # the JSON's content
    state: dict  # what results.py needs to reopen this result (small; the arrays stay on disk)


def render(seg: Segmentation, folder: Path) -> Rendered:
    """Draw and write everything a request offers into `folder` (a new folder per request)."""
    pred, rgb = seg.pred, seg.rgb
    maps = pred.maps.float().numpy()
    stats = class_stats(pred.labels, maps)
    palette = class_palette(pred.names)
    stem = file_stem(seg.image_info["name"])
    points = label_points(pred.labels, len(pred.names))
    segmentation = folder / f"{stem}_segmentation.png"
    draw_segmentation(rgb, pred.labels, palette, pred.names, seg.options.opacity, points).save(segmentation)

    lo, hi = value_range(maps, pred.unit)
    photo = faint_photo(rgb, (maps.shape[2], maps.shape[1]))
    bar = colour_bar(lo, hi, pred.unit, maps.shape[1])
    gallery = []
    for i, k in enumerate(stats.order[:MAX_GALLERY]):
        path = folder / f"{stem}_scores_{i:02d}.png"
        score_panel(maps[k], photo, lo, hi, bar).save(path)
        gallery.append((str(path), caption(pred.names[k], stats.coverage[k])))

    labels = pred.labels
    oh, ow = seg.image_info["original_size"]
    if labels.shape != (oh, ow) and oh * ow <= LABEL_MAP_MAX_PIXELS:  # at the upload's size
        big = Image.fromarray(labels.astype(np.int32)).resize((ow, oh), Image.Resampling.NEAREST)
        labels = np.asarray(big)
    png, encoding = label_map_image(labels, palette)
    label_map = folder / f"{stem}_labels.png"
    png.save(label_map)
    np.save(folder / "labels.npy", pred.labels.astype(np.int32))
    np.save(folder / "maps.npy", maps.astype(np.float16))
    np.save(folder / "image.npy", rgb)

    seconds = time.perf_counter() - seg.started
    record = {
        "model": seg.spec.label, "untrained": seg.spec.untrained, "image": seg.image_info,
        "unit": pred.unit, "seconds": round(seconds, 3), "unmatched": seg.options.unmatched,
        "threshold": seg.options.threshold if seg.options.unmatched == "threshold" else None,
        "timing": {"model_load": round(seg.load_seconds, 4), **pred.timing}, "info": pred.info,
        "label_map": {"file": label_map.name, "encoding": encoding, "size": list(labels.shape),
                      "segmented_at": list(pred.labels.shape)},
        "unlabelled_fraction": round(float((pred.labels == UNLABELLED).mean()), 6),
        "classes": [{"index": i, "name": n, "color": hex_color(palette[i]), "pixels": int(stats.counts[i]),
                     "fraction": round(float(stats.coverage[i]), 6), "max": round(float(stats.peak[i]), 5),
                     "mean": round(float(maps[i].mean()), 5)} for i, n in enumerate(pred.names)],
        "notes": [n.text for n in seg.notes],
    }
    results = folder / f"{stem}_results.json"
    results.write_text(json.dumps(record, indent=2, ensure_ascii=False), "utf-8")
    state = {"folder": str(folder), "stem": stem, "names": list(pred.names), "unit": pred.unit,
             "palette": palette.tolist(), "order": stats.order.tolist(), "coverage": stats.coverage.tolist(),
             "peak": stats.peak.tolist(), "range": [lo, hi], "points": {str(k): v for k, v in points.items()},
             "threshold": record["threshold"],
             "drawn": {str(k): p for k, (p, _) in zip(stats.order, gallery)}, "gallery": list(gallery)}
    return Rendered(folder, segmentation, gallery, label_map, results, record, state)
