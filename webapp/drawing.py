"""The segmentation as a picture: class colours over the photo, each class's name written on it.

    palette = class_palette(names)                                  # (K, 3) uint8
    points = label_points(labels, len(names))                       # {class: (x, y)} inside its region
    img = draw_segmentation(rgb, labels, palette, names, 0.5, points)   # PIL RGB, names on the picture
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from denseclip import viz
from denseclip.vocab import ADE20K_CLASSES, clean_class_names

UNLABELLED = -1  # label of pixels that match no class name (ZeroShotSegmenter's background)
MIN_LABEL_FRACTION = 0.004  # classes smaller than this share of the picture get no name on it
LABEL_GRID = 160  # label positions are searched on a grid this long (cheap, and as good for text)


def class_palette(names: Sequence[str]) -> np.ndarray:
    """(K, 3) uint8: ADE20K's palette for the ADE20K classes (the paper's figures), tab20 for up to 20
    classes, else viz.make_palette."""
    k = len(names)
    if k > 20 or tuple(names) == clean_class_names(ADE20K_CLASSES):
        return viz.make_palette(k)
    import matplotlib

    tab = matplotlib.colormaps["tab20"].colors  # pairs (dark, light): the dark ten first
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return (np.asarray([tab[i] for i in order[:k]]) * 255).round().astype(np.uint8)


def hex_color(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def label_points(labels: np.ndarray, num_classes: int, min_fraction: float = MIN_LABEL_FRACTION
                 ) -> dict[int, tuple[int, int]]:
    """For each class covering at least `min_fraction` of the picture, the (x, y) pixel deepest inside
    its region (farthest from its border and the picture's edge), largest classes first."""
    h, w = labels.shape
    step = max(1, -(-max(h, w) // LABEL_GRID))
    grid = labels[step // 2::step, step // 2::step]
    counts = np.bincount(grid[grid >= 0].ravel(), minlength=num_classes)
    points = {}
    for k in np.argsort(-counts, kind="stable"):
        if counts[k] < min_fraction * grid.size or counts[k] == 0:
            break
        region = np.pad(grid == k, 1)  # outside the picture counts as the border
        depth = np.zeros(region.shape, np.int32)
        while region.any():  # erode by one cell a round: depth = rounds a cell survives
            depth += region
            inner = region.copy()
            inner[1:-1, 1:-1] &= region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:]
            region = inner
        y, x = np.unravel_index(int(depth.argmax()), depth.shape)
        points[int(k)] = (min(w - 1, (x - 1) * step + step // 2), min(h - 1, (y - 1) * step + step // 2))
    return points


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    from matplotlib import font_manager

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def draw_segmentation(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, names: Sequence[str],
                      opacity: float, points: dict[int, tuple[int, int]] | None = None) -> Image.Image:
    """Class colours blended over the photo at `opacity` (unlabelled pixels show the photo), and the
    names at `points` in white with a dark outline; a name that would cover an earlier one is skipped."""
    alpha = float(np.clip(opacity, 0.0, 1.0))
    out = rgb.copy()
    valid = labels >= 0
    out[valid] = (rgb[valid] * (1 - alpha) + palette[labels[valid]] * alpha).round().astype(np.uint8)
    img = Image.fromarray(out)
    if not points:
        return img
    h, w = labels.shape
    size = int(np.clip(min(h, w) / 17, 12, 48))
    font, stroke = _font(size), max(1, size // 9)
    draw = ImageDraw.Draw(img)
    taken: list[tuple[float, float, float, float]] = []
    for k, (x, y) in points.items():
        box = draw.textbbox((x, y), names[k], font=font, anchor="mm", stroke_width=stroke)
        dx = min(0, w - 1 - box[2]) - min(0, box[0])  # keep the name inside the picture
        dy = min(0, h - 1 - box[3]) - min(0, box[1])
        box = (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken):
            continue
        taken.append(box)
        draw.text((x + dx, y + dy), names[k], font=font, anchor="mm", fill=(255, 255, 255),
                  stroke_width=stroke, stroke_fill=(20, 20, 20))
    return img
