"""Score maps as pictures: each class's map laid over a faint grey copy of the photo, all maps of a
request on one colour scale (so classes compare at a glance), each with a colour bar naming its unit.

    bar = colour_bar(lo, hi, "cosine similarity", height=288)
    panel = score_panel(maps[k], faint_photo(rgb, maps.shape[:0:-1]), lo, hi, bar)   # PIL RGBA
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from denseclip import viz

CMAP = "viridis"
HEAT_WEIGHT = 0.65  # the rest is the grey photo underneath
BAR_WIDTH = 150  # pixels: the colour bar, its ticks and its label
TEXT_GREY = "#8c8c8c"  # reads on light and dark pages alike (the bar's background is transparent)


def value_range(maps: np.ndarray, unit: str) -> tuple[float, float]:
    """One colour scale for all maps: probabilities 0..1, cosine similarities their min..max."""
    if unit == "probability":
        return 0.0, 1.0
    lo, hi = float(np.nanmin(maps)), float(np.nanmax(maps))
    return lo, hi if hi > lo else lo + 1e-6


def faint_photo(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) float32 grey copy of the photo at `size` = (w, h)."""
    grey = Image.fromarray(rgb).convert("L").resize(size, Image.Resampling.BILINEAR)
    return np.repeat(np.asarray(grey, np.float32)[..., None], 3, axis=-1)


def colour_bar(lo: float, hi: float, unit: str, height: int) -> Image.Image:
    """An RGBA colour bar `height` pixels tall with ticks and the unit, on a transparent background."""
    fig = Figure(figsize=(BAR_WIDTH / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    fig.patch.set_alpha(0.0)
    margin = min(0.1, 12 / height)  # room for the end ticks' labels
    cax = fig.add_axes((0.06, margin, 0.12, 1 - 2 * margin))
    bar = fig.colorbar(ScalarMappable(norm=Normalize(lo, hi), cmap=CMAP), cax=cax)
    bar.outline.set_edgecolor(TEXT_GREY)
    bar.ax.tick_params(labelsize=15, colors=TEXT_GREY, length=4)
    bar.set_label(unit, color=TEXT_GREY, fontsize=15, labelpad=4)
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba()).copy(), "RGBA")


def score_panel(score: np.ndarray, photo: np.ndarray, lo: float, hi: float, bar: Image.Image) -> Image.Image:
    """One class's map (h, w) coloured on [lo, hi], over `photo` (h, w, 3), with `bar` on its right."""
    heat = np.asarray(viz.heatmap(score, CMAP, lo, hi), np.float32)
    if heat.shape[:2] != photo.shape[:2]:
        heat = np.asarray(Image.fromarray(heat.astype(np.uint8)).resize(photo.shape[1::-1],
                                                                       Image.Resampling.BILINEAR), np.float32)
    blend = (heat * HEAT_WEIGHT + photo * (1 - HEAT_WEIGHT)).round().astype(np.uint8)
    h, w = blend.shape[:2]
    panel = Image.new("RGBA", (w + bar.width, max(h, bar.height)), (0, 0, 0, 0))
    panel.paste(Image.fromarray(blend).convert("RGBA"), (0, 0))
    panel.paste(bar, (w, 0))
    return panel
