"""Find more like this: the visitor clicks a point, and sees how close every region's dense embedding is to
that point's (cosine similarity, the score maps' colour map), from the same dense embeddings the score
maps come from.

The embeddings are computed on the first click on a result (about one image encoding) and kept with the
result, unit length at the feature grid in float16 (ViT-B/16 at 448 px: 512 x 28 x 28, 0.8 MB); later
clicks only read them.

    path, text = similar_regions(registry, state, x, y)     # a panel (JPEG) and its caption
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ImageDraw

from .errors import UserError
from .models import ModelRegistry
from .outputs import JPEG
from .pipeline import COMPUTE, load_model
from .results import load
from .scoremaps import faint_photo, panel_size, score_panel

EMBEDDINGS = "embeddings.npy"


def embeddings(registry: ModelRegistry, state: dict) -> np.ndarray:
    """(D, h, w) float16 unit dense embeddings of the result's image: from its folder, else computed now."""
    path = Path(state["folder"]) / EMBEDDINGS
    if path.is_file():
        return np.load(path)
    spec = registry.resolve(state["model"])
    if spec.kind != "zeroshot":
        raise UserError("Finding similar regions works with the zero-shot models (CLIP) only.")
    net = load_model(registry, spec)
    with COMPUTE, torch.no_grad():
        dense = dense_embeddings(net, load(state, "image.npy"), spec.method)
    unit = F.normalize(dense, dim=0).cpu().numpy().astype(np.float16)
    np.save(path, unit)
    return unit


def dense_embeddings(model, rgb: np.ndarray, method: str | None) -> torch.Tensor:
    """(D, h, w) float32 dense embeddings of the image at the segmenter's working size, for `method`: the
    feature cells that cover the image."""
    opts = model.options(**({"method": method} if method else {}))
    return model.image_embeddings(model.working_image(rgb, opts.size, opts.max_long_side), opts)


def similar_regions(registry: ModelRegistry, state: dict, x: int, y: int) -> tuple[str, str]:
    """A panel of the cosine similarity between the dense embedding at pixel (x, y) of the result's
    image and every other one, with the point marked; and its caption."""
    rgb = load(state, "image.npy", mmap=True)
    h, w = rgb.shape[:2]
    if not (0 <= x < w and 0 <= y < h):
        raise UserError("Click inside the picture.")
    emb = embeddings(registry, state).astype(np.float32)
    gh, gw = emb.shape[1:]
    point = emb[:, min(gh - 1, y * gh // h), min(gw - 1, x * gw // w)]
    similarity = np.tensordot(point, emb, axes=1)  # (gh, gw) cosine similarities
    lo, hi = float(similarity.min()), 1.0
    size = panel_size(h, w)
    panel = score_panel(similarity, faint_photo(np.asarray(rgb), size), lo, hi)
    px, py, r = x * size[0] / w, y * size[1] / h, max(4, size[0] // 60)
    draw = ImageDraw.Draw(panel)
    draw.ellipse((px - r, py - r, px + r, py + r), outline=(255, 255, 255), width=max(2, r // 2))
    out = Path(state["folder"]) / f"{state['stem']}_like_{x}_{y}.jpg"
    panel.save(out, **JPEG)
    return str(out), f"like the point ({x}, {y}) · cosine similarity {lo:.2f} to 1"
