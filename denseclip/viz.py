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
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from PIL import Image

__all__ = [
    "PALETTES", "make_palette", "distinct_palette", "colorize", "label_map_png", "labels_to_png16", "overlay",
    "heatmap", "scoremap_figure", "scoremap_gallery", "coverage_figure",
    "figure_to_image", "save_figure",
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


def _as_scores(scores: Any, class_names: Sequence[str] | None = None) -> np.ndarray:
    arr = _to_numpy(scores)
    if arr.ndim == 4 and arr.shape[0] == 1:  # tolerate a batch of one, (1, K, H, W)
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"scores must have shape (K, H, W), got {tuple(arr.shape)}")
    if class_names is not None and len(class_names) != arr.shape[0]:
        raise ValueError(f"len(class_names)={len(class_names)} but scores has K={arr.shape[0]} maps")
    return arr.astype(np.float32, copy=False)


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


def _new_figure(figsize: tuple[float, float], dpi: float = 100) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: rendering never goes through pyplot
    return fig


def _get_cmap(cmap: str | Colormap) -> Colormap:
    return cmap if isinstance(cmap, Colormap) else matplotlib.colormaps[cmap]


# ----------------------------------------------------------------------------------------- palettes
def make_palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """Distinct, deterministic colours, shape (num_classes, 3) uint8.

    The first 150 entries follow the ADE20K convention (``PALETTES["ade20k"]``), except that the one
    repeated colour of the original (index 48 duplicates index 6) is replaced so that all rows are
    unique. Further colours are drawn with ``seed``, avoiding repeats and very dark tones (black marks
    ignored pixels); ``seed`` only affects those generated colours.
    """
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
    ten strong colours first, then their light partners) for up to 20 classes, else ``make_palette``.

    For a handful of classes; for ADE20K's 150, ``make_palette`` keeps the paper's colours (whose first
    two, wall and building, are both grey)."""
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
        raise ValueError(
            f"labels span [{int(lab[valid].min())}, {top - 1}] but the palette has {len(pal)} colours; "
            f"pass a larger palette, e.g. make_palette({top})"
        )
    rgb = np.zeros((*lab.shape, 3), dtype=np.uint8)
    rgb[valid] = pal[lab[valid]]
    return Image.fromarray(rgb)


def label_map_png(labels: Any, palette: Any = None, ignore_index: int | None = 255) -> Image.Image:
    """Palette ("P" mode) image of a label map (H, W): pixel values are the labels, saved losslessly as PNG.

    P mode holds at most 256 indices; for more classes use :func:`labels_to_png16`. The palette slot of
    ``ignore_index`` is black.
    """
    lab = _as_labels(labels)
    if lab.size and (lab.min() < 0 or lab.max() > 255):
        raise ValueError(
            f"labels span [{int(lab.min())}, {int(lab.max())}] but a palette PNG stores indices 0..255; "
            "save a 16-bit grayscale PNG instead: labels_to_png16(labels).save('labels.png')"
        )
    pal = np.zeros((256, 3), dtype=np.uint8)  # unused slots (incl. 255 = ignore) stay black
    given = _resolve_palette(palette, int(lab.max()) + 1 if lab.size else 1)[:256]
    pal[: len(given)] = given
    if ignore_index is not None and 0 <= ignore_index < 256:
        pal[ignore_index] = 0
    im = Image.fromarray(lab.astype(np.uint8)).convert("P")
    im.putpalette(pal.reshape(-1).tolist())
    return im


def labels_to_png16(labels: Any) -> Image.Image:
    """16-bit grayscale ("I;16") image of a label map (H, W) with values 0..65535; save as PNG.

    Read back with ``np.array(Image.open(path))``.
    """
    lab = _as_labels(labels)
    if lab.size and (lab.min() < 0 or lab.max() > 65535):
        raise ValueError(f"labels span [{int(lab.min())}, {int(lab.max())}]; a 16-bit PNG holds 0..65535")
    return Image.fromarray(lab.astype(np.uint16))


def overlay(
    image: Any, labels: Any, palette: Any = None, alpha: float = 0.5, ignore_index: int | None = 255
) -> Image.Image:
    """Blend the colorized label map (H, W) over an image of the same size; ignored pixels show the image.

    ``alpha`` is the label colour's weight: 0 gives the image, 1 the colorized map.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _as_rgb(image)
    lab = _as_labels(labels)
    if img.shape[:2] != lab.shape:
        raise ValueError(
            f"image is {img.shape[0]}x{img.shape[1]} (HxW) but labels are {lab.shape[0]}x{lab.shape[1]}; "
            "resize one of them (nearest for labels) so they match"
        )
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
    rgba = _get_cmap(cmap)(norm, bytes=True)
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]))


def _panel_order(scores: np.ndarray, sort_by: Any, order: Sequence[int] | None = None) -> np.ndarray:
    k = scores.shape[0]
    if order is not None:
        idx = np.asarray(list(order), dtype=np.int64)
        if idx.size and (idx.min() < -k or idx.max() >= k):
            raise ValueError(f"order indexes classes out of range for K={k}")
        return idx % k if k else idx
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


def _grid(n_panels: int, max_cols: int = 6) -> tuple[int, int]:
    """(rows, cols) for n panels: at most max_cols per row, rows as even as possible."""
    rows = math.ceil(n_panels / max_cols)
    return rows, math.ceil(n_panels / rows)


def scoremap_figure(
    image: Any, scores: Any, class_names: Sequence[str], *, max_maps: int = 12, sort_by: Any = None,
    cmap: str | Colormap = "viridis", vmin: float | None = None, vmax: float | None = None,
) -> Figure:
    """Grid of the image (if not None) plus one panel per class score map, titled with the class name.

    scores: (K, H, W). ``sort_by``: (K,) per-class values (e.g. coverage) to show panels in descending
    order, or "max"/"mean" of each map. At most ``max_maps`` maps are drawn, at most 6 panels a row.
    ``vmin``/``vmax``: one colour scale for every panel, drawn as one colour bar (``0, 1`` for
    probabilities; the maps' common range makes classes comparable); without them each panel gets its
    own range and its own colour bar, so a flat map looks as contrasted as a peaked one.
    Add a title with ``fig.suptitle(...)``.
    """
    s = _as_scores(scores, class_names)
    idx = _panel_order(s, sort_by)[: max(int(max_maps), 0)]
    n_panels = len(idx) + (image is not None)
    if n_panels == 0:
        raise ValueError("nothing to draw: no image and no score maps (K=0 or max_maps=0)")
    shared = vmin is not None and vmax is not None
    if shared and not vmax > vmin:
        raise ValueError(f"vmax must be larger than vmin, got vmin={vmin}, vmax={vmax}")
    nrows, ncols = _grid(n_panels)
    fig = _new_figure((3.0 * ncols + (0.6 if shared else 0.0), 2.8 * nrows + 0.4))
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
        im = ax.imshow(s[k], cmap=_get_cmap(cmap), interpolation="nearest", vmin=vmin, vmax=vmax)
        ax.set_title(str(class_names[k]))
        ax.set_axis_off()
        if not shared:  # an inset axes follows the aspect-shrunk image box, so the bar matches its height
            fig.colorbar(im, cax=ax.inset_axes([1.03, 0.0, 0.05, 1.0]))
    if shared and im is not None:
        fig.colorbar(im, ax=axes[: len(idx)], shrink=0.9, aspect=30)
    return fig


def scoremap_gallery(
    scores: Any, class_names: Sequence[str], image: Any = None, *, order: Sequence[int] | None = None,
    cmap: str | Colormap = "viridis", alpha: float = 0.5, vmin: float | None = None,
    vmax: float | None = None,
) -> list[tuple[Image.Image, str]]:
    """One rendered heatmap per class with a colour bar, captioned "name (min–max)"; for ``gr.Gallery``.

    scores: (K, H, W). With ``image``, each heatmap is resized (bilinear) to the image and blended over it
    with weight ``alpha``; score maps are usually coarser than the image, so a size mismatch is expected.
    ``order``: class indices to show, in that order (default 0..K-1; slice it to show fewer).
    ``vmin``/``vmax``: one colour scale for every map (default: each map's own min–max).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    s = _as_scores(scores, class_names)
    idx = _panel_order(s, None, order)
    img = _as_rgb(image) if image is not None else None
    cm = _get_cmap(cmap)
    out: list[tuple[Image.Image, str]] = []
    for k in idx:
        lo, hi = float(np.nanmin(s[k])), float(np.nanmax(s[k]))
        lo_shown = lo if vmin is None else float(vmin)
        hi_shown = hi if vmax is None else float(vmax)
        heat = heatmap(s[k], cm, lo_shown, hi_shown)
        if img is not None:
            heat = heat.resize((img.shape[1], img.shape[0]), Image.Resampling.BILINEAR)
            blend = img.astype(np.float32) * (1 - alpha) + np.asarray(heat, np.float32) * alpha
            heat = Image.fromarray(np.clip(np.rint(blend), 0, 255).astype(np.uint8))
        # fixed layout in inches: image at its own aspect (3" tall), then a bar of the same height
        w, h = heat.size
        img_w, bar_w, pad, ticks = 3.0 * w / h, 0.15, 0.1, 0.55
        fig_w = img_w + pad + bar_w + ticks
        fig = Figure(figsize=(fig_w, 3.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0.0, 0.0, img_w / fig_w, 1.0))
        ax.imshow(np.asarray(heat), aspect="auto")
        ax.set_axis_off()
        cax = fig.add_axes(((img_w + pad) / fig_w, 0.03, bar_w / fig_w, 0.94))
        norm = Normalize(lo_shown, hi_shown if hi_shown > lo_shown else lo_shown + 1e-6)
        fig.colorbar(ScalarMappable(norm=norm, cmap=cm), cax=cax).ax.tick_params(labelsize=8)
        out.append((figure_to_image(fig), f"{class_names[k]} ({lo:.3g}–{hi:.3g})"))
    return out


# ----------------------------------------------------------------------------------------- coverage
def coverage_figure(fractions: Any, class_names: Sequence[str], palette: Any = None, top: int = 20) -> Figure:
    """Horizontal bar chart of the ``top`` largest non-zero class fractions (K,), largest at the top."""
    frac = _to_numpy(fractions).astype(np.float64)
    if frac.ndim != 1 or len(class_names) != frac.shape[0]:
        raise ValueError(f"fractions must have shape (K,) with K=len(class_names)={len(class_names)}, "
                         f"got {tuple(frac.shape)}")
    pal = _resolve_palette(palette, len(frac))
    idx = [int(i) for i in np.argsort(-frac, kind="stable")[:top] if frac[i] > 0]
    fig = _new_figure((6.0, 0.32 * max(len(idx), 1) + 1.0))
    ax = fig.add_subplot()
    y = np.arange(len(idx))
    ax.barh(y, frac[idx] * 100, color=[pal[i % len(pal)] / 255.0 for i in idx], edgecolor="black",
            linewidth=0.5)
    ax.set_yticks(y, [str(class_names[i]) for i in idx])
    ax.invert_yaxis()  # largest first
    ax.set_xlabel("pixels (%)")
    for yi, i in zip(y, idx):
        ax.text(frac[i] * 100, yi, f" {frac[i] * 100:.1f}", va="center", fontsize=8)
    ax.set_xlim(0, max(frac[idx].max() * 100 * 1.15, 1.0) if idx else 1.0)
    return fig


# ----------------------------------------------------------------------------------------- output
def figure_to_image(fig: Figure, dpi: float = 100) -> Image.Image:
    """Render a figure with Agg to an RGB image of size (figsize * dpi), composited on white."""
    # draw on an Agg canvas; a figure attached to another canvas (e.g. a GUI one) gets it back after
    old_canvas, old_dpi = fig.canvas, fig.dpi
    canvas = old_canvas if isinstance(old_canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    try:
        if dpi != old_dpi:
            fig.dpi = dpi
        canvas.draw()
        rgba = Image.fromarray(np.array(canvas.buffer_rgba()))
    finally:
        fig.dpi = old_dpi
        fig.set_canvas(old_canvas)
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def save_figure(fig: Figure, path: str | os.PathLike, dpi: float = 100, **kwargs: Any) -> None:
    """Save a figure (format from the extension: png, pdf, svg, ...), creating parent directories."""
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=dpi, **kwargs)
