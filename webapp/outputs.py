"""What a finished request shows and offers, written to the request's own folder (never shared with
another request): the segmentation picture, the first score-map panels, the label map (PNG), the results
(JSON), and the arrays that later clicks read (see results.py). Photo-like pictures are JPEGs (fast to
write, small); the label map is a lossless palette PNG.

    folders = OutputFolders(base)         # base: where Gradio serves files from (nothing is copied)
    out = render(seg, folders.new())      # seg from pipeline.segment
    out.segmentation, out.gallery, out.label_map, out.results: files; out.record: the JSON's content

Disk: each server process writes into its own run folder; run folders of processes that are gone (a
killed server) are removed at the next start, and a running server keeps at most `max_bytes` of
results (the oldest removed first) and none older than `max_age` seconds.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from denseclip import viz
from denseclip.checkpoints import write_json
from denseclip.zeroshot import BACKGROUND

from .drawing import draw_segmentation, hex_color, label_points
from .pipeline import Segmentation
from .scoremaps import faint_photo, panel_size, score_panel, value_range

FIRST_MAPS = 4  # score maps drawn per request (largest coverage first); any other one on demand
LABEL_MAP_MAX_PIXELS = 25_000_000  # the label map is written at the upload's size up to this
JPEG = {"quality": 90, "subsampling": 0}  # photo-like pictures (full colour resolution: thin lines, text)
RUNS = "denseclip-runs"  # folder of the run folders, inside `base`
LOCK = ".lock"  # held (flock) by a run folder's process while it lives


def file_stem(name: str) -> str:
    """A safe file-name stem from an uploaded file's name (at most 60 characters of [A-Za-z0-9_-])."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem)[:60].strip("_")
    return stem or "image"


def folder_bytes(folder: Path) -> int:
    try:
        return sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())
    except OSError:
        return 0


class OutputFolders:
    """One new folder per request, inside this process's run folder under `base`/denseclip-runs."""

    def __init__(self, base: str | Path | None = None, max_bytes: float = 500e6, max_age: float = 3600):
        runs = Path(base or tempfile.gettempdir()) / RUNS
        runs.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=runs))
        self._lock_file = open(self.root / LOCK, "w")  # noqa: SIM115 (held for the process's life)
        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.max_bytes, self.max_age = max_bytes, max_age
        self._sizes: OrderedDict[Path, int] = OrderedDict()  # request folders, oldest first -> bytes
        self._guard = threading.Lock()
        self.removed_stale = remove_stale_runs(runs, keep=self.root)
        atexit.register(shutil.rmtree, self.root, True)

    def new(self) -> Path:
        with self._guard:
            self._prune()
            path = self.root / uuid.uuid4().hex
            path.mkdir()
            self._sizes[path] = 0
        return path

    def account(self, folder: Path) -> None:
        """Record what a request wrote (called once its files are written)."""
        with self._guard:
            if folder in self._sizes:
                self._sizes[folder] = folder_bytes(folder)

    def _prune(self) -> None:
        now = time.time()
        if sum(self._sizes.values()) > self.max_bytes:  # files added after `account`: measure again
            for folder in self._sizes:
                self._sizes[folder] = folder_bytes(folder)
        while self._sizes:
            oldest = next(iter(self._sizes))
            try:
                old = now - oldest.stat().st_mtime > self.max_age
            except OSError:
                old = True
            if not old and sum(self._sizes.values()) <= self.max_bytes:
                break
            shutil.rmtree(oldest, ignore_errors=True)
            del self._sizes[oldest]

    def total_bytes(self) -> int:
        return sum(folder_bytes(folder) for folder in list(self._sizes))


def remove_stale_runs(runs: Path, keep: Path) -> int:
    """Remove run folders whose process is gone (its lock is free); returns how many."""
    removed = 0
    for run in runs.glob("run-*"):
        if run == keep or not run.is_dir():
            continue
        try:
            with open(run / LOCK, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its process holds it
        except BlockingIOError:
            continue
        except OSError:
            if time.time() - run.stat().st_mtime < 60:  # being created right now
                continue
        shutil.rmtree(run, ignore_errors=True)
        removed += 1
    return removed


@dataclass
class ClassStats:
    counts: np.ndarray  # (K,) pixels per class
    coverage: np.ndarray  # (K,) fraction of all pixels (unlabelled pixels count for none)
    peak: np.ndarray  # (K,) each class's largest score
    order: np.ndarray  # (K,) class indices: coverage first, then peak score


def class_stats(labels: np.ndarray, maps: np.ndarray) -> ClassStats:
    counts = np.bincount(labels[labels != BACKGROUND], minlength=len(maps))
    cov = counts / labels.size
    peak = maps.reshape(len(maps), -1).max(1)
    return ClassStats(counts, cov, peak, np.lexsort((-peak, -cov)))


def label_map_image(labels: np.ndarray, palette: np.ndarray) -> tuple[Image.Image, str]:
    """The label map as a lossless PNG and its encoding: up to 255 classes an 8-bit palette PNG
    (255 = unlabelled), more a 16-bit grayscale PNG (65535 = unlabelled)."""
    valid = labels != BACKGROUND
    if len(palette) <= 255:
        png = viz.label_map_png(np.where(valid, labels, 255).astype(np.uint8), palette, ignore_index=255)
        return png, "8-bit palette PNG: pixel value = index into `classes`, 255 = unlabelled"
    png = viz.labels_to_png16(np.where(valid, labels, 65535))
    return png, "16-bit grayscale PNG: pixel value = index into `classes`, 65535 = unlabelled"


def caption(name: str, coverage: float) -> str:
    return f"{name} · {coverage * 100:.1f}% of pixels"


@dataclass
class Rendered:
    folder: Path
    segmentation: Path  # the picture: colours and names over the photo
    gallery: list[tuple[str, str]]  # (panel file, caption) of the FIRST_MAPS largest classes
    label_map: Path
    results: Path
    record: dict  # the JSON's content
    state: dict  # what results.py needs to reopen this result (small; the arrays stay on disk)


def draw_panel(folder: Path, stem: str, k: int, maps: np.ndarray, rgb: np.ndarray, lo: float, hi: float
               ) -> str:
    """Class k's score-map panel, written as a JPEG into `folder`; its path."""
    path = folder / f"{stem}_scores_{k:03d}.jpg"
    score_panel(maps[k], faint_photo(rgb, panel_size(*rgb.shape[:2])), lo, hi).save(path, **JPEG)
    return str(path)


def render(seg: Segmentation, folder: Path) -> Rendered:
    """Draw and write everything a request offers into `folder` (a new folder per request)."""
    pred, rgb = seg.pred, seg.rgb
    maps = pred.maps.float().numpy()
    stats = class_stats(pred.labels, maps)
    palette = viz.distinct_palette(len(pred.names))
    stem = file_stem(seg.image_info["name"])
    points = label_points(pred.labels, len(pred.names))
    segmentation = folder / f"{stem}_segmentation.jpg"
    draw_segmentation(rgb, pred.labels, palette, pred.names, seg.options.opacity, points).save(segmentation,
                                                                                               **JPEG)
    lo, hi = value_range(maps, pred.unit)
    gallery = [(draw_panel(folder, stem, k, maps, rgb, lo, hi), caption(pred.names[k], stats.coverage[k]))
               for k in stats.order[:FIRST_MAPS]]

    labels = pred.labels
    oh, ow = seg.image_info["original_size"]
    if labels.shape != (oh, ow) and oh * ow <= LABEL_MAP_MAX_PIXELS:  # at the upload's size
        big = Image.fromarray(labels.astype(np.int32)).resize((ow, oh), Image.Resampling.NEAREST)
        labels = np.asarray(big)
    png, encoding = label_map_image(labels, palette)
    label_map = folder / f"{stem}_labels.png"
    png.save(label_map, compress_level=1)
    np.save(folder / "labels.npy", pred.labels.astype(np.int16))
    np.save(folder / "maps.npy", maps.astype(np.float16))
    np.save(folder / "image.npy", rgb)

    record = {
        "model": seg.spec.label, "pretrained": seg.spec.pretrained, "image": seg.image_info,
        "unit": pred.unit, "seconds": round(time.perf_counter() - seg.started, 3),
        "unmatched": seg.options.unmatched,
        "threshold": seg.options.threshold if seg.options.unmatched == "threshold" else None,
        "timing": {"model_load": round(seg.load_seconds, 4), **pred.timing}, "info": pred.info,
        "score_range": [round(lo, 5), round(hi, 5)], "colormap": "viridis",
        "label_map": {"file": label_map.name, "encoding": encoding, "size": list(labels.shape),
                      "segmented_at": list(pred.labels.shape)},
        "unlabelled_fraction": round(float((pred.labels == BACKGROUND).mean()), 6),
        "classes": [{"index": i, "name": n, "color": hex_color(palette[i]), "pixels": int(stats.counts[i]),
                     "fraction": round(float(stats.coverage[i]), 6), "max": round(float(stats.peak[i]), 5),
                     "mean": round(float(maps[i].mean()), 5)} for i, n in enumerate(pred.names)],
        "notes": [n.text for n in seg.notes],
    }
    results = folder / f"{stem}_results.json"
    write_json(results, record)
    state = {"folder": str(folder), "stem": stem, "names": list(pred.names), "unit": pred.unit,
             "palette": palette.tolist(), "order": stats.order.tolist(), "coverage": stats.coverage.tolist(),
             "range": [lo, hi], "points": {str(k): v for k, v in points.items()},
             "threshold": pred.info.get("threshold_score"), "model": seg.spec.label,
             "drawn": {str(k): p for k, (p, _) in zip(stats.order, gallery)}, "gallery": list(gallery)}
    return Rendered(folder, segmentation, gallery, label_map, results, record, state)
