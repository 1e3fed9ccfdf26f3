"""Tests for denseclip.viz: palettes, label-map images and PNG round trips, overlays, score-map figures."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from denseclip import viz

RNG = np.random.default_rng(0)
NAMES = ["wall", "sky", "tree", "road", "person"]


def rand_labels(h=24, w=32, k=5, ignore_frac=0.0, seed=0):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, k, size=(h, w))
    if ignore_frac:
        lab[rng.random((h, w)) < ignore_frac] = 255
    return lab


def rand_image(h=24, w=32, seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def image_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images]


# ------------------------------------------------------------------------------------ palettes

def test_palette_shape_dtype_and_ade20k_convention():
    p = viz.make_palette(150)
    assert p.shape == (150, 3) and p.dtype == np.uint8
    assert p[:4].tolist() == [[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50]]
    ade = viz.PALETTES["ade20k"]
    assert ade.shape == (150, 3) and ade.dtype == np.uint8 and not ade.flags.writeable
    assert ade[149].tolist() == [92, 0, 255]
    # the published palette repeats index 6 at index 48; make_palette replaces only that row
    assert ade[48].tolist() == ade[6].tolist() == [140, 140, 140]
    differs = np.flatnonzero((p != ade).any(axis=1))
    assert differs.tolist() == [48]
    assert viz.make_palette(5).tolist() == p[:5].tolist()
    assert viz.make_palette(0).shape == (0, 3)


@pytest.mark.parametrize("n", [150, 1000, 3000])
def test_palette_rows_unique_and_not_black(n):
    p = viz.make_palette(n)
    assert p.shape == (n, 3)
    assert len({tuple(r) for r in p.tolist()}) == n
    assert not (p == 0).all(axis=1).any()  # black is reserved for ignored pixels


def test_palette_deterministic_and_seeded():
    assert np.array_equal(viz.make_palette(1000), viz.make_palette(1000))
    a, b = viz.make_palette(1000, seed=0), viz.make_palette(1000, seed=1)
    assert np.array_equal(np.delete(a[:150], 48, 0), np.delete(b[:150], 48, 0))  # ADE20K part fixed
    assert not np.array_equal(a[150:], b[150:])
    with pytest.raises(ValueError):
        viz.make_palette(-1)


def test_distinct_palette_vivid_and_unique():
    p = viz.distinct_palette(5)
    assert p.shape == (5, 3) and p.dtype == np.uint8
    assert p[0].tolist() == [31, 119, 180]  # tab10 blue
    for n in (1, 10, 20, 25):
        q = viz.distinct_palette(n)
        assert len({tuple(r) for r in q.tolist()}) == n
    assert np.array_equal(viz.distinct_palette(25), viz.make_palette(25))
    # far apart: no two of the first 10 closer than 60 in RGB (ADE20K's first two, both grey, are 60 apart)
    q = viz.distinct_palette(10).astype(float)
    d = np.linalg.norm(q[:, None] - q[None], axis=-1) + np.eye(10) * 1e9
    assert d.min() > 60
    with pytest.raises(ValueError):
        viz.distinct_palette(-1)


# ------------------------------------------------------------------------------------ label maps

def test_colorize_maps_labels_to_palette_and_ignore_to_black():
    lab = rand_labels(ignore_frac=0.2)
    pal = viz.make_palette(5)
    rgb = np.asarray(viz.colorize(lab, pal))
    assert rgb.shape == (*lab.shape, 3) and viz.colorize(lab, pal).mode == "RGB"
    for c in range(5):
        assert (rgb[lab == c] == pal[c]).all()
    assert (rgb[lab == 255] == 0).all()
    # default palette and named palette agree with make_palette on the first classes
    assert np.array_equal(np.asarray(viz.colorize(lab)), rgb)
    assert np.array_equal(np.asarray(viz.colorize(lab, "ade20k")), rgb)


def test_colorize_errors():
    with pytest.raises(ValueError, match=r"make_palette\(10\)"):
        viz.colorize(np.full((2, 2), 9), viz.make_palette(5))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        viz.colorize(np.zeros((1, 2, 2), dtype=int))
    with pytest.raises(ValueError, match="integer"):
        viz.colorize(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        viz.colorize(np.zeros((2, 2), dtype=int), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="unknown palette"):
        viz.colorize(np.zeros((2, 2), dtype=int), "nope")


def test_label_map_png_round_trip(tmp_path: Path):
    lab = rand_labels(k=150, ignore_frac=0.1)
    pal = viz.make_palette(150)
    im = viz.label_map_png(lab, pal)
    assert im.mode == "P"
    path = tmp_path / "labels.png"
    im.save(path)
    back = Image.open(path)
    assert back.mode == "P"
    assert np.array_equal(np.asarray(back).astype(np.int64), lab)
    flat = back.getpalette()
    assert flat[: 150 * 3] == pal.reshape(-1).tolist()
    assert flat[255 * 3: 256 * 3] == [0, 0, 0]  # ignore slot is black
    # rendering the palette image gives the same colours as colorize
    assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(viz.colorize(lab, pal)))


def test_label_map_png_rejects_large_labels_and_png16_round_trips(tmp_path: Path):
    lab = rand_labels(k=1000)
    lab[0, 0] = 65535
    with pytest.raises(ValueError, match="labels_to_png16"):
        viz.label_map_png(lab, viz.make_palette(1000))
    with pytest.raises(ValueError):
        viz.label_map_png(np.full((2, 2), -1), None)
    path = tmp_path / "labels16.png"
    viz.labels_to_png16(torch.from_numpy(lab)).save(path)
    assert np.array_equal(np.asarray(Image.open(path)).astype(np.int64), lab)
    with pytest.raises(ValueError, match="65535"):
        viz.labels_to_png16(np.full((2, 2), 70000))


# ------------------------------------------------------------------------------------ overlay / heatmap

def test_overlay_alpha_extremes_and_ignore():
    img, lab = rand_image(), rand_labels()
    pal = viz.make_palette(5)
    assert np.array_equal(np.asarray(viz.overlay(img, lab, pal, alpha=0.0)), img)
    assert np.array_equal(np.asarray(viz.overlay(Image.fromarray(img), lab, pal, alpha=1.0)),
                          np.asarray(viz.colorize(lab, pal)))
    half = np.asarray(viz.overlay(img, lab, pal, alpha=0.5)).astype(int)
    expected = (img.astype(float) + pal[lab]) / 2
    assert np.abs(half - expected).max() <= 0.5 + 1e-9
    lab_ign = rand_labels(ignore_frac=0.3)
    out = np.asarray(viz.overlay(img, lab_ign, pal, alpha=1.0))
    assert (out[lab_ign == 255] == img[lab_ign == 255]).all()  # ignored pixels show the image


def test_overlay_size_mismatch_and_bad_alpha():
    with pytest.raises(ValueError, match="match"):
        viz.overlay(rand_image(24, 32), rand_labels(12, 16))
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(rand_image(), rand_labels(), alpha=1.5)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        viz.overlay(np.zeros((24, 32, 5), np.uint8), rand_labels())


def test_heatmap_ramp_follows_colormap():
    ramp = np.tile(np.linspace(-2.0, 3.0, 64, dtype=np.float32), (4, 1))
    cmap = matplotlib.colormaps["viridis"]
    hm = viz.heatmap(ramp)
    arr = np.asarray(hm)
    assert hm.mode == "RGB" and arr.shape == (4, 64, 3)
    assert arr[0, 0].tolist() == list(cmap(0.0, bytes=True)[:3])
    assert arr[0, -1].tolist() == list(cmap(1.0, bytes=True)[:3])
    expected = cmap(np.linspace(0, 1, 64), bytes=True)[:, :3]
    assert np.abs(arr[0].astype(int) - expected.astype(int)).max() <= 1
    # explicit range clips; grey colormap is monotone in brightness
    grey = np.asarray(viz.heatmap(ramp, cmap="gray", vmin=0.0, vmax=1.0))[0, :, 0].astype(int)
    assert (np.diff(grey) >= 0).all() and grey[0] == 0 and grey[-1] == 255
    assert np.asarray(viz.heatmap(np.ones((3, 3)))).shape == (3, 3, 3)  # constant map: no div by zero
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        viz.heatmap(np.zeros((2, 3, 3)))


# ------------------------------------------------------------------------------------ score-map figures

def test_scoremap_figure_panels_titles_and_colorbars():
    scores = RNG.normal(size=(5, 8, 10)).astype(np.float32)
    fig = viz.scoremap_figure(rand_image(), scores, NAMES)
    axes = image_axes(fig)
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes] == ["image", *NAMES]
    assert len(fig.axes) == 6  # one row of 6: no unused grid cells
    assert [len(ax.child_axes) for ax in axes] == [0, 1, 1, 1, 1, 1]  # a colour bar (inset) per map
    # each panel on its own range
    assert [ax.images[0].get_clim() for ax in axes[1:]] == [(s.min(), s.max()) for s in scores]
    fig = viz.scoremap_figure(None, scores[:4], NAMES[:4], max_maps=4)
    assert len(image_axes(fig)) == 4


def test_scoremap_figure_shared_scale_has_one_colorbar():
    scores = RNG.uniform(0.2, 0.6, size=(5, 8, 10)).astype(np.float32)
    fig = viz.scoremap_figure(rand_image(), scores, NAMES, vmin=0.0, vmax=1.0)
    axes = image_axes(fig)
    assert [ax.images[0].get_clim() for ax in axes[1:]] == [(0.0, 1.0)] * 5
    assert not any(ax.child_axes for ax in axes)
    bars = [ax for ax in fig.axes if ax not in axes]
    assert len(bars) == 1 and bars[0].get_ylim() == (0.0, 1.0)
    with pytest.raises(ValueError, match="vmax"):
        viz.scoremap_figure(None, scores, NAMES, vmin=1.0, vmax=1.0)


def test_scoremap_figure_grid_wraps_after_six_panels():
    scores = RNG.normal(size=(12, 4, 4)).astype(np.float32)
    fig = viz.scoremap_figure(rand_image(), scores, [f"c{i}" for i in range(12)])
    rows = {ax.get_subplotspec().rowspan.start for ax in image_axes(fig)}
    assert len(image_axes(fig)) == 13 and len(rows) == 3  # 13 panels: 3 rows of at most 5


def test_scoremap_figure_sort_by_and_max_maps():
    scores = torch.randn(5, 8, 10)
    cov = np.array([0.1, 0.4, 0.0, 0.3, 0.2])
    fig = viz.scoremap_figure(rand_image(), scores, NAMES, sort_by=cov, max_maps=3)
    assert [ax.get_title() for ax in image_axes(fig)] == ["image", "sky", "road", "person"]
    fig = viz.scoremap_figure(None, scores, NAMES, sort_by=torch.tensor(cov), max_maps=2)
    assert [ax.get_title() for ax in image_axes(fig)] == ["sky", "road"]
    peaks = scores.reshape(5, -1).amax(1).numpy()
    fig = viz.scoremap_figure(None, scores, NAMES, sort_by="max")
    assert [ax.get_title() for ax in image_axes(fig)] == [NAMES[i] for i in np.argsort(-peaks)]
    # the panel shows the class's own map
    assert np.allclose(image_axes(fig)[0].images[0].get_array(), scores[int(np.argmax(peaks))].numpy())


def test_scoremap_figure_bad_inputs():
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        viz.scoremap_figure(None, np.zeros((8, 10)), NAMES)
    with pytest.raises(ValueError, match="K = 5 class names"):
        viz.scoremap_figure(None, np.zeros((4, 8, 10)), NAMES)
    with pytest.raises(ValueError, match=r"shape \(K,\)"):
        viz.scoremap_figure(None, np.zeros((5, 8, 10)), NAMES, sort_by=[1.0, 2.0])
    with pytest.raises(ValueError, match="sort_by"):
        viz.scoremap_figure(None, np.zeros((5, 8, 10)), NAMES, sort_by="median")


def test_rendering_from_threads_matches_sequential():
    # Gradio serves requests from worker threads: renders must not share state
    scores = torch.randn(2, 8, 10)

    def render(i):
        fig = viz.scoremap_figure(rand_image(seed=i), scores, NAMES[:2], sort_by="max")
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba()).copy()

    sequential = [render(i) for i in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = list(pool.map(render, range(3)))
    assert all(np.array_equal(a, b) for a, b in zip(sequential, threaded))


def test_save_figure_creates_directories(tmp_path: Path):
    fig = viz.scoremap_figure(rand_image(), torch.randn(2, 4, 4), NAMES[:2])
    path = tmp_path / "a" / "b" / "scores.png"
    viz.save_figure(fig, path, dpi=50)
    assert Image.open(path).size[0] > 0


def test_torch_inputs_accepted():
    img = torch.rand(3, 24, 32)  # CHW float in [0, 1], the torch layout
    lab = torch.from_numpy(rand_labels())
    ov = viz.overlay(img, lab, alpha=0.0)
    assert np.abs(np.asarray(ov).astype(int) - np.rint(img.permute(1, 2, 0).numpy() * 255)).max() == 0
    assert viz.colorize(lab).size == (32, 24)
    assert viz.heatmap(torch.randn(8, 8, dtype=torch.bfloat16)).size == (8, 8)
    assert len(image_axes(viz.scoremap_figure(img, torch.randn(1, 5, 8, 10), NAMES))) == 6  # batch of 1 ok


def test_no_pyplot_import():
    # fresh interpreter so other tests' imports don't interfere; load the file directly (fast, no torch)
    code = (
        "import importlib.util, sys, numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('viz', {viz.__file__!r})\n"
        "v = importlib.util.module_from_spec(spec); spec.loader.exec_module(v)\n"
        "v.scoremap_figure(np.zeros((4, 4, 3), np.uint8), np.zeros((1, 4, 4)), ['a']).canvas.draw()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
