"""Visualisation of DenseCLIP outputs: palettes, label maps, pixel-text score maps, figures.

Everything draws on ``matplotlib.figure.Figure`` with an attached ``FigureCanvasAgg``; pyplot is never
imported, so no global backend state is touched and the functions are safe to call from worker threads
(e.g. a Gradio server). Every array argument may also be a torch tensor.

    from denseclip import viz
    viz.overlay(image, result.labels, viz.make_palette(len(names))).save("overlay.png")
    fig = viz.scoremap_figure(image, scores, names, sort_by="max")   # scores (K, H, W)
    viz.save_figure(fig, "scores.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from PIL import Image

__all__ = [
    "PALETTES", "make_palette", "distinct_palette", "colorize", "label_map_png", "labels_to_png16", "overlay",
    "heatmap", "scoremap_figure", "save_figure",
]

# The ADE20K-150 palette as used by mmsegmentation (and hence the DenseCLIP code base), stored as hex
# RGB triplets. Note that the original palette repeats (140, 140, 140) at indices 6 and 48.
_ADE20K_HEX = (
    "787878b4787806e6e650323204c8037878508c8c8ccc05ffe6e6e604fa07e005ffebff0796053d78784608ff33ff0652"
    "8fff8cccff04ff3307cc46030066c83de6faff06330b66ffff0747ff09e00907e6dcdcdcff095c7009ff08ffd607ffe0"
    "ffb8060aff47ff290a07ffffe0ff086608ffff3d06ffc207ff7a0800ff14ff0829ff05990633ffeb0cffa0961400a3ff"
    "8c8c8cfa0a0f14ff001fff00ff1f00ffe00099ff000000ffff470000ebff00adff1f00ff0bc8c8ff520000fff5003dff"
    "00ff7000ff85ff0000ffa300ff6600c2ff00008fff33ff000052ff00ff2900ffad0a00ffadff0000ff99ff5c00ff00ff"
    "ff00f5ff0066ffad00ff0014ffb8b8001fff00ff3d0047ffff00cc00ffc200ff52000aff0070ff3300ff00c2ff007aff"
    "00ffa3ff990000ff0aff70008fff005200ffa3ff00ffeb0008b8aa8500ff00ff5cb800ffff001f00b8ff00d6ffff0070"
    "5cff0000e0ff70e0ff46b8a0a300ff9900ff47ff00ff00a3ffcc00ff008f00ffeb85ff00ff00ebf500ffff007afff500"
    "0abed4d6ff0000ccff1400ffffff000099ff0029ff00ffcc2900ff29ff00ad00ff00f5ff4700ff7a00ff00ffb8005cff"
    "b8ff000085ffffd60019c2c266ff005c00ff"
)
_ADE20K = np.frombuffer(bytes.fromhex(_ADE20K_HEX), dtype=np.uint8).reshape(150, 3)
_ADE20K.flags.writeable = False

#: Named reference palettes, exactly as published (read-only arrays of shape (N, 3) uint8).
PALETTES: dict[str, np.ndarray] = {"ade20k": _ADE20K}


# ----------------------------------------------------------------------------------------- helpers
def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like or torch tensor (half/bfloat16 are upcast: numpy lacks bfloat16)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _as_labels(labels: Any) -> np.ndarray:
    arr = _to_numpy(labels)
    if arr.ndim != 2:
        raise ValueError(f"labels must have shape (H, W), got {tuple(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"labels must be an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _as_rgb(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image or an (H, W, 3|4) / (3, H, W) array; floats are taken as [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = _to_numpy(image)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW, the torch layout
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"image must be a PIL image or have shape (H, W, 3), got {tuple(arr.shape)}")
    arr = arr[..., :3]
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(np.rint(arr * 255.0), 0, 255)
    return arr.astype(np.uint8, copy=False)


def _resolve_palette(palette: Any, min_colors: int) -> np.ndarray:
    if palette is None:
        return make_palette(max(min_colors, 1))
    if isinstance(palette, str):
        if palette not in PALETTES:
            raise ValueError(f"unknown palette {palette!r}; available: {sorted(PALETTES)}")
        palette = PALETTES[palette]
    arr = _to_numpy(palette)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"palette must have shape (N, 3), got {tuple(arr.shape)}")
    return np.clip(arr, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------- palettes
def make_palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """Distinct, deterministic colours, shape (num_classes, 3) uint8: ADE20K's first 150 (its one repeat,
    index 48 = index 6, replaced), then colours drawn with ``seed``, no repeats and no very dark tones
    (black marks ignored pixels)."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    out = np.zeros((num_classes, 3), dtype=np.uint8)
    used: set[tuple[int, int, int]] = set()
    rng = np.random.default_rng(seed)
    for i in range(num_classes):
        color = tuple(int(c) for c in _ADE20K[i]) if i < len(_ADE20K) else None
        while color is None or color in used:
            color = tuple(int(c) for c in rng.integers(40, 256, size=3))
        used.add(color)
        out[i] = color
    return out


def distinct_palette(num_classes: int) -> np.ndarray:
    """Vivid colours that are easy to tell apart, shape (num_classes, 3) uint8: matplotlib's tab20 (its
    ten strong colours first, then their light partners) for up to 20 classes, else ``make_palette``
    (ADE20K's 150 keep the paper's colours)."""
    if num_classes > 20:
        return make_palette(num_classes)
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    tab = matplotlib.colormaps["tab20"].colors  # pairs (strong, light)
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return (np.asarray([tab[i] for i in order[:num_classes]]).reshape(-1, 3) * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------------------- label maps
def colorize(labels: Any, palette: Any = None, ignore_index: int | None = 255) -> Image.Image:
    """RGB image of a label map (H, W); ``ignore_index`` pixels are black. ``palette`` is (N, 3) or a name."""
    lab = _as_labels(labels)
    valid = lab != ignore_index if ignore_index is not None else np.ones(lab.shape, dtype=bool)
    top = int(lab[valid].max()) + 1 if valid.any() else 1
    pal = _resolve_palette(palette, top)
    if valid.any() and (lab[valid].min() < 0 or top > len(pal)):
        raise ValueError(f"labels span [{int(lab[valid].min())}, {top - 1}] but the palette has {len(pal)} "
                         f"colours; pass a larger palette, e.g. make_palette({top})")
    rgb = np.zeros((*lab.shape, 3), dtype=np.uint8)
    rgb[valid] = pal[lab[valid]]
    return Image.fromarray(rgb)


def label_map_png(labels: Any, palette: Any = None, ignore_index: int | None = 255) -> Image.Image:
    """Palette ("P" mode) image of a label map (H, W): pixel values are the labels, saved losslessly as PNG.
    P mode holds at most 256 indices (more classes: :func:`labels_to_png16`); ``ignore_index`` is black."""
    lab = _as_labels(labels)
    if lab.size and (lab.min() < 0 or lab.max() > 255):
        raise ValueError(f"labels span [{int(lab.min())}, {int(lab.max())}] but a palette PNG stores indices "
                         "0..255; save a 16-bit grayscale PNG instead: labels_to_png16(labels).save('l.png')")
    pal = np.zeros((256, 3), dtype=np.uint8)  # unused slots (incl. 255 = ignore) stay black
    given = _resolve_palette(palette, int(lab.max()) + 1 if lab.size else 1)[:256]
    pal[: len(given)] = given
    if ignore_index is not None and 0 <= ignore_index < 256:
        pal[ignore_index] = 0
    im = Image.fromarray(lab.astype(np.uint8)).convert("P")
    im.putpalette(pal.reshape(-1).tolist())
    return im


def labels_to_png16(labels: Any) -> Image.Image:
    """16-bit grayscale ("I;16") image of a label map (H, W) with values 0..65535; save as PNG (read back
    with ``np.array(Image.open(path))``)."""
    lab = _as_labels(labels)
    if lab.size and (lab.min() < 0 or lab.max() > 65535):
        raise ValueError(f"labels span [{int(lab.min())}, {int(lab.max())}]; a 16-bit PNG holds 0..65535")
    return Image.fromarray(lab.astype(np.uint16))


def overlay(image: Any, labels: Any, palette: Any = None, alpha: float = 0.5,
            ignore_index: int | None = 255) -> Image.Image:
    """Blend the colorized label map (H, W) over an image of the same size; ignored pixels show the image.
    ``alpha`` is the label colour's weight: 0 gives the image, 1 the colorized map."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _as_rgb(image)
    lab = _as_labels(labels)
    if img.shape[:2] != lab.shape:
        raise ValueError(f"image is {img.shape[0]}x{img.shape[1]} (HxW) but labels are {lab.shape[0]}x"
                         f"{lab.shape[1]}; resize one of them (nearest for labels) so they match")
    color = np.asarray(colorize(lab, palette, ignore_index), dtype=np.float32)
    out = img.astype(np.float32) * (1.0 - alpha) + color * alpha
    if ignore_index is not None:
        out[lab == ignore_index] = img[lab == ignore_index]
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------- score maps
def heatmap(score: Any, cmap: str | Colormap = "viridis", vmin: float | None = None,
            vmax: float | None = None) -> Image.Image:
    """RGB image of a score map (H, W) through a matplotlib colormap; range defaults to the map's min/max."""
    s = _to_numpy(score).astype(np.float32)
    if s.ndim != 2:
        raise ValueError(f"score must have shape (H, W), got {tuple(s.shape)}")
    lo = float(np.nanmin(s)) if vmin is None else float(vmin)
    hi = float(np.nanmax(s)) if vmax is None else float(vmax)
    # a constant map would divide by zero; show it at the bottom of the colour scale
    norm = np.clip((s - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(s)
    rgba = matplotlib.colormaps.get_cmap(cmap)(norm, bytes=True)
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]))


def _panel_order(scores: np.ndarray, sort_by: Any) -> np.ndarray:
    k = scores.shape[0]
    if sort_by is None:
        return np.arange(k)
    if isinstance(sort_by, str):
        reducers = {"max": np.nanmax, "mean": np.nanmean}
        if sort_by not in reducers:
            raise ValueError(f"sort_by must be an array of K values, 'max' or 'mean', got {sort_by!r}")
        key = reducers[sort_by](scores.reshape(k, -1), axis=1)
    else:
        key = _to_numpy(sort_by).astype(np.float64).reshape(-1)
        if key.shape != (k,):
            raise ValueError(f"sort_by must have shape (K,) = ({k},), got {tuple(_to_numpy(sort_by).shape)}")
    return np.argsort(-key, kind="stable")  # descending, ties keep class order


def scoremap_figure(
    image: Any, scores: Any, class_names: Sequence[str], *, max_maps: int = 12, sort_by: Any = None,
    cmap: str | Colormap = "viridis", vmin: float | None = None, vmax: float | None = None,
) -> Figure:
    """Grid of the image (if not None) plus one panel per class score map (K, H, W), titled with the class
    name; at most ``max_maps`` maps, 6 panels a row. ``sort_by``: (K,) per-class values (e.g. coverage),
    or "max"/"mean" of each map, in descending order. ``vmin``/``vmax``: one colour scale and colour bar
    for every panel (classes compare); without them each panel gets its own. Title: ``fig.suptitle``."""
    s = _to_numpy(scores).astype(np.float32)
    s = s[0] if s.ndim == 4 and s.shape[0] == 1 else s  # a batch of one, (1, K, H, W)
    if s.ndim != 3 or len(class_names) != s.shape[0]:
        raise ValueError(f"scores must have shape (K, H, W) with K = {len(class_names)} class names, got "
                         f"{tuple(s.shape)}")
    idx = _panel_order(s, sort_by)[: max(int(max_maps), 0)]
    n_panels = len(idx) + (image is not None)
    if n_panels == 0:
        raise ValueError("nothing to draw: no image and no score maps (K=0 or max_maps=0)")
    shared = vmin is not None and vmax is not None
    if shared and not vmax > vmin:
        raise ValueError(f"vmax must be larger than vmin, got vmin={vmin}, vmax={vmax}")
    nrows = math.ceil(n_panels / 6)  # at most 6 panels a row, rows as even as possible
    ncols = math.ceil(n_panels / nrows)
    fig = Figure(figsize=(3.0 * ncols + (0.6 if shared else 0.0), 2.8 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: rendering never goes through pyplot
    axes = list(fig.subplots(nrows, ncols, squeeze=False).reshape(-1))
    for ax in axes[n_panels:]:
        fig.delaxes(ax)  # drop unused grid cells so only real panels remain
    if image is not None:
        ax = axes.pop(0)
        ax.imshow(_as_rgb(image))
        ax.set_title("image")
        ax.set_axis_off()
    im = None
    for ax, k in zip(axes, idx):
        im = ax.imshow(s[k], cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
        ax.set_title(str(class_names[k]))
        ax.set_axis_off()
        if not shared:  # an inset axes follows the aspect-shrunk image box, so the bar matches its height
            fig.colorbar(im, cax=ax.inset_axes([1.03, 0.0, 0.05, 1.0]))
    if shared and im is not None:
        fig.colorbar(im, ax=axes[: len(idx)], shrink=0.9, aspect=30)
    return fig


# ----------------------------------------------------------------------------------------- output
def save_figure(fig: Figure, path: str | os.PathLike, dpi: float = 100, **kwargs: Any) -> None:
    """Save a figure (format from the extension: png, pdf, svg, ...), creating parent directories."""
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=dpi, **kwargs)
