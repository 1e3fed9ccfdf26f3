"""Score maps as pictures: each class's map laid over a faint grey copy of the photo, all maps of a
request on one colour scale (so classes compare at a glance). The page draws the colour bar once, in
HTML (page.colour_bar_html); the JSON gives the scale's range.

    lo, hi = value_range(maps, "cosine similarity")
    panel = score_panel(maps[k], faint_photo(rgb, size), lo, hi)     # PIL RGB, `size` = (w, h)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from denseclip import viz

CMAP = "viridis"
HEAT_WEIGHT = 0.65  # the rest is the grey photo underneath
PANEL_SIDE = 320  # long side of a score-map panel (maps are smooth: larger shows nothing more)


def value_range(maps: np.ndarray, unit: str) -> tuple[float, float]:
    """One colour scale for all maps: probabilities 0..1, cosine similarities their min..max."""
    if unit == "probability":
        return 0.0, 1.0
    lo, hi = float(np.nanmin(maps)), float(np.nanmax(maps))
    return lo, hi if hi > lo else lo + 1e-6


def panel_size(height: int, width: int, side: int = PANEL_SIDE) -> tuple[int, int]:
    """(w, h) of a panel for a picture of `height` x `width`: long side `side` (smaller ones as they are)."""
    scale = min(1.0, side / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def faint_photo(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) float32 grey copy of the photo at `size` = (w, h)."""
    grey = Image.fromarray(rgb).convert("L").resize(size, Image.Resampling.BILINEAR)
    return np.repeat(np.asarray(grey, np.float32)[..., None], 3, axis=-1)


def score_panel(score: np.ndarray, photo: np.ndarray, lo: float, hi: float, cmap: str = CMAP) -> Image.Image:
    """One class's map (h, w) resized (bilinear) to `photo` (H, W, 3), coloured on [lo, hi], over it."""
    size = (photo.shape[1], photo.shape[0])
    score = np.asarray(score, np.float32)
    if score.shape[::-1] != size:
        score = np.asarray(Image.fromarray(score, "F").resize(size, Image.Resampling.BILINEAR))
    heat = viz.heatmap(score, cmap, lo, hi)
    blend = np.asarray(heat, np.float32) * HEAT_WEIGHT + photo * (1 - HEAT_WEIGHT)
    return Image.fromarray(blend.round().astype(np.uint8))
