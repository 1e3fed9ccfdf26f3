"""Results as pictures: a segmentation (class colours over the photo, each class's name written on it)
and detections (boxes in their class colours, a "name score" tag each, translucent instance masks).
Colours and the blend are the library's (denseclip.viz): one palette for the page, the files and the
notebooks.

    palette = viz.distinct_palette(len(names))                      # (K, 3) uint8
    points = label_points(labels, len(names))                       # {class: (x, y)} inside its region
    img = draw_segmentation(rgb, labels, palette, names, 0.5, points)   # PIL RGB, names on the picture
    img = draw_detections(rgb, boxes, labels, ["cup 0.91", ...], palette, masks)   # best first
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from denseclip import viz
from denseclip.zeroshot import BACKGROUND

MASK_OPACITY = 0.45  # detections: how strongly an instance mask's class colour covers the photo
MIN_LABEL_FRACTION = 0.004  # classes smaller than this share of the picture get no name on it
LABEL_GRID = 160  # label positions are searched on a grid this long (cheap, and as good for text)
# Tags stay readable on a phone: a picture is shown about 320 CSS pixels wide there, so a tag's text is
# at least this share of the picture's long side (12 px on the phone).
TAG_TEXT_SHARE = 12 / 320


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
    img = viz.overlay(rgb, labels, palette, float(np.clip(opacity, 0.0, 1.0)), ignore_index=BACKGROUND)
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
        if _overlaps(box, taken):
            continue
        taken.append(box)
        draw.text((x + dx, y + dy), names[k], font=font, anchor="mm", fill=(255, 255, 255),
                  stroke_width=stroke, stroke_fill=(20, 20, 20))
    return img


def text_colour(rgb) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (perceived brightness)."""
    r, g, b = (int(c) for c in rgb)
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _overlaps(box, boxes) -> bool:
    return any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes)


def _tag_box(box, size: tuple[int, int], picture: tuple[int, int], taken) -> tuple[int, int, int, int] | None:
    """Where a tag of `size` (w, h) goes for `box`: above it, else inside its top, else below it; inside
    the picture and over no tag placed before; None if there is no such place."""
    (tw, th), (w, h) = size, picture
    x = int(min(max(0, box[0]), max(0, w - tw)))
    for y in (box[1] - th, box[1], box[3]):
        y = int(min(max(0, y), max(0, h - th)))
        tag = (x, y, x + tw, y + th)
        if not _overlaps(tag, taken):
            return tag
    return None


def draw_detections(rgb: np.ndarray, boxes: np.ndarray, labels: np.ndarray, captions: Sequence[str],
                    palette: np.ndarray, masks: np.ndarray | None = None,
                    mask_opacity: float = MASK_OPACITY) -> Image.Image:
    """Detections over the photo, best first in the arguments: boxes (N, 4) xyxy in pixels, labels (N,)
    class indices into `palette`, one caption each ("cup 0.91"), masks (N, H, W) bool or None.

    Masks are blended in their class colour (smaller masks over larger ones), boxes drawn worst first
    (the best on top), and each caption written on a tag in its box's colour; a tag that
    would cover a better detection's tag moves inside or below its box, or is left out (the results
    table lists every detection).
    """
    h, w = rgb.shape[:2]
    if masks is not None and len(masks):
        painted = np.full((h, w), BACKGROUND, np.int64)
        for i in np.argsort(-masks.reshape(len(masks), -1).sum(1), kind="stable"):
            painted[masks[i]] = labels[i]  # the largest first: a cup's mask shows over the table's
        img = draw_segmentation(rgb, painted, palette, (), mask_opacity)
    else:
        img = Image.fromarray(rgb)
    size = max(12, math.ceil(max(h, w) * TAG_TEXT_SHARE))
    font, pad, width = _font(size), max(2, size // 5), max(2, round(min(h, w) / 250))
    draw = ImageDraw.Draw(img)
    tags, taken = [], []
    for i, caption in enumerate(captions):  # places: the best detections' tags first
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font, anchor="lt")
        tag = _tag_box(boxes[i], (right - left + 2 * pad, bottom - top + 2 * pad), (w, h), taken)
        if tag is not None:
            taken.append(tag)
            tags.append((i, tag))
    for i in range(len(boxes) - 1, -1, -1):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        draw.rectangle((x1, y1, x2, y2), outline=tuple(int(c) for c in palette[labels[i]]), width=width)
    for i, tag in reversed(tags):
        colour = tuple(int(c) for c in palette[labels[i]])
        draw.rectangle(tag, fill=colour)
        draw.text((tag[0] + pad, tag[1] + pad), captions[i], font=font, anchor="lt", fill=text_colour(colour))
    return img
