"""The ZeroShotSegmenter calls of the web app, for the library as it is and as it will be.

The library is moving the method and PAMR from the segmenter to each `predict` call (one CLIP tower
serves every method) and holds the weights in a fast precision (`dtype="auto"`). Until that lands, a
method is a second segmenter over the same CLIP tower (nothing copied), made once and kept. When the
library has per-call methods (PER_CALL), every function here is one plain library call: delete this
file then, and call the library directly.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from dataclasses import fields

import torch

from denseclip.zeroshot import PredictOptions, ZeroShotSegmenter

PER_CALL = "method" in {f.name for f in fields(PredictOptions)}
_views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # segmenter -> {(method, pamr): view}
_lock = threading.Lock()


def _dtype_name(dtype: torch.dtype) -> str | None:
    return None if dtype == torch.float32 else str(dtype).removeprefix("torch.")


def from_pretrained(name: str, pretrained: str, device: str, dtype: torch.dtype, **defaults):
    if PER_CALL:
        return ZeroShotSegmenter.from_pretrained(name, pretrained=pretrained, device=device, dtype=dtype,
                                                 **defaults)
    return ZeroShotSegmenter.from_pretrained(name, pretrained, device, autocast_dtype=_dtype_name(dtype),
                                             **defaults)


def segmenter(clip, name: str, pretrained: str | None, **defaults):
    """A segmenter over a CLIP model the app built (the toy and tiny models)."""
    if PER_CALL:
        return ZeroShotSegmenter(clip, name, pretrained=pretrained, **defaults)
    return ZeroShotSegmenter(clip, name, is_random=pretrained is None, pretrained=pretrained, **defaults)


def dtype_of(zs) -> torch.dtype:
    """The precision the segmenter computes its image and text embeddings in."""
    return getattr(zs, "dtype", None) if PER_CALL else (zs.autocast_dtype or torch.float32)


def _view(zs, method: str | None, pamr_steps: int):
    method = method or zs.method
    if method == zs.method and pamr_steps == zs.cfg.pamr_steps:
        return zs
    with _lock:
        views = _views.setdefault(zs, {})
        if (method, pamr_steps) not in views:
            cfg = zs.cfg.replace(method=method, pamr_steps=pamr_steps)
            views[(method, pamr_steps)] = type(zs)(zs.clip, zs.model_name, cfg, is_random=zs.is_random,
                                                   pretrained=zs.pretrained).to(zs.device)
        return views[(method, pamr_steps)]


def predict(zs, rgb, names, method: str | None, pamr_steps: int, **options):
    if PER_CALL:
        return zs.predict(rgb, names, method=method, pamr_steps=pamr_steps, **options)
    return _view(zs, method, pamr_steps).predict(rgb, names, **options)


def encode_text(zs, names, templates, method: str | None = None) -> torch.Tensor:
    return (zs if PER_CALL else _view(zs, method, 0)).encode_text(names, templates)


def dense_embeddings(zs, rgb, method: str | None) -> torch.Tensor:
    """(D, h, w) dense embeddings of the image at the segmenter's working size, for `method`: the
    feature cells that cover the image (the padding's cells cut off)."""
    x = zs.working_image(rgb)
    h, w = x.shape[2:]
    x = torch.nn.functional.pad(x, (0, -w % zs.pad_to, 0, -h % zs.pad_to))
    if PER_CALL:
        same = "method" in inspect.signature(zs.dense_embeddings).parameters
        dense = zs.dense_embeddings(x, **({"method": method} if same else {}))[0]
    else:
        dense = _view(zs, method, 0).dense_embeddings(x)[0]
    return dense[:, : -(-h // zs.stride), : -(-w // zs.stride)]
