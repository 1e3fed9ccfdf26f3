"""A finished result, reopened from its folder: redraw at another opacity, any class's score map, what
is at a pixel, and the legend rows. `state` is `Rendered.state` (outputs.py); the arrays stay on disk,
so a visitor's session holds a few kilobytes, not the maps.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from .drawing import draw_segmentation, hex_color
from .errors import UserError
from .outputs import JPEG, caption, draw_panel

LEGEND_ROWS = 24  # classes listed in the legend (the JSON has all)


def load(state: dict, name: str, mmap: bool = False) -> np.ndarray:
    path = Path(state["folder"]) / name
    if not path.is_file():
        raise UserError("This result has expired on the server. Press Segment again.")
    return np.load(path, mmap_mode="r" if mmap else None)


def recolour(state: dict, opacity: float) -> str:
    """The segmentation drawn again at `opacity`, as a new file (a file once offered is never rewritten)."""
    labels, rgb = load(state, "labels.npy").astype(np.int64), load(state, "image.npy")
    points = {int(k): tuple(v) for k, v in state["points"].items()}
    palette = np.asarray(state["palette"], np.uint8)
    img = draw_segmentation(rgb, labels, palette, state["names"], opacity, points)
    path = Path(state["folder"]) / f"{state['stem']}_segmentation_{uuid.uuid4().hex[:8]}.jpg"
    img.save(path, **JPEG)
    return str(path)


def score_map(state: dict, name: str) -> tuple[str, str]:
    """(panel file, caption) of class `name`'s score map, drawn on first request."""
    if name not in state["names"]:
        raise UserError(f"'{name}' is not one of this result's classes.")
    k = state["names"].index(name)
    drawn = state["drawn"].get(str(k))
    if drawn is None:
        maps, rgb = load(state, "maps.npy").astype(np.float32), load(state, "image.npy")
        drawn = draw_panel(Path(state["folder"]), state["stem"], k, maps, rgb, *state["range"])
        state["drawn"][str(k)] = drawn
    return drawn, caption(name, state["coverage"][k])


def gallery_with(state: dict, name: str) -> tuple[list[tuple[str, str]], int]:
    """The score-map gallery showing class `name`: (items, index of its map). A class beyond the drawn
    ones is drawn now and put first."""
    path, text = score_map(state, name)
    items = [tuple(item) for item in state["gallery"]]
    paths = [p for p, _ in items]
    if path in paths:
        return items, paths.index(path)
    return [(path, text), *items], 0


def at_pixel(state: dict, x: int, y: int, top: int = 3) -> str:
    """What is at pixel (x, y) of the segmentation: its class and the best `top` scores there (Markdown)."""
    labels = load(state, "labels.npy", mmap=True)
    maps = load(state, "maps.npy", mmap=True)
    h, w = labels.shape
    if not (0 <= x < w and 0 <= y < h):
        return ""
    k = int(labels[y, x])
    scores = np.asarray(maps[:, min(maps.shape[1] - 1, y * maps.shape[1] // h),
                             min(maps.shape[2] - 1, x * maps.shape[2] // w)], np.float32)
    best = np.argsort(-scores, kind="stable")[:top]
    names = state["names"]
    listed = ", ".join(f"{names[i]} {scores[i]:.2f}" for i in best)
    if k < 0:
        why = f" (best score below {state['threshold']:.2f})" if state.get("threshold") is not None else ""
        return f"At ({x}, {y}): **unlabelled**{why} · {state['unit']}: {listed}"
    return f"At ({x}, {y}): **{names[k]}** · {state['unit']}: {listed}"


def legend_rows(state: dict, rows: int = LEGEND_ROWS) -> tuple[list[tuple[str, str, float]], int]:
    """(name, colour, coverage) of every class, largest first (those at 0% too), at most `rows`; and how
    many more classes there are."""
    order, palette = state["order"], state["palette"]
    shown = [(state["names"][k], hex_color(palette[k]), state["coverage"][k]) for k in order[:rows]]
    return shown, len(order) - len(shown)
