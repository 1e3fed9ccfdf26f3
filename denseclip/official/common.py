"""What the authors' segmentation and detection checkpoints share: the mmcv file, their CLIP towers, the
text side, and the renaming of keys with one table per task.

A table is a tuple of (their name, our name) prefixes; `{}` stands for a number and carries over
("neck.lateral_convs.{}.conv." <-> "detector.backbone.fpn.inner_blocks.{}.0."). The first match wins,
in both directions, so one table translates their files and names our keys in messages about them.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import torch

from ..config import ModelConfig, PromptConfig

Table = tuple[tuple[str, str], ...]


def read_official_checkpoint(path: str | Path, class_names: tuple[str, ...] | None = None
                             ) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) of an mmcv checkpoint, loaded without executing pickled code; `class_names`
    replace (or supply) meta["CLASSES"]."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    core = np._core if hasattr(np, "_core") else np.core  # mmcv's meta may hold numpy scalars: just those
    safe = [np.dtype, np.ndarray, type(np.dtype("float64")), type(np.dtype("int64")), core.multiarray.scalar,
            core.multiarray._reconstruct]
    try:
        with torch.serialization.safe_globals(safe):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read {path} as a checkpoint with weights_only=True ({e}); "
                         "is it a PyTorch/mmcv .pth file?") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(ckpt).__name__})")
    state = ckpt.get("state_dict", ckpt)
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items() if torch.is_tensor(v)}
    if not state:
        raise ValueError(f"{path} holds no tensors")
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    return state, {**meta, "CLASSES": tuple(class_names)} if class_names is not None else meta


def count(state: dict, pattern: str) -> int:
    """1 + the largest number captured by `pattern` in the keys (0 when none matches): layers, blocks."""
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in state if (m := rx.match(k))}
    return max(found) + 1 if found else 0


@cache
def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{\}", r"(\d+)"))


def rename(key: str, table: Table, reverse: bool = False) -> str | None:
    """`key` under the other side's name (theirs -> ours; ours -> theirs with reverse), None if none fits."""
    for theirs, ours in table:
        src, dst = (ours, theirs) if reverse else (theirs, ours)
        m = _pattern(src).match(key)
        if m:
            return dst.format(*m.groups()) + key[m.end():]
    return None


def translate_keys(state: dict[str, torch.Tensor], table: Table, drop: tuple[str, ...], what: str,
                   fixes: dict | None = None) -> dict[str, torch.Tensor]:
    """An authors' state dict under our names: keys starting with `drop` left out, the tensors of our keys
    in `fixes` passed through their function; a key the table does not know is an error."""
    out = {}
    for key, tensor in state.items():
        if key.startswith(drop):
            continue
        ours = rename(key, table)
        if ours is None:
            raise ValueError(f"unexpected tensor {key!r} in a DenseCLIP {what} checkpoint")
        out[ours] = (fixes or {}).get(ours, lambda t: t)(tensor)
    return out


def text_side(state: dict[str, torch.Tensor]) -> tuple[dict, int, PromptConfig] | None:
    """(open_clip text_cfg, text embedding dim, PromptConfig) read off their text encoder, contexts and
    context decoder; None for a CLIP baseline (no text encoder in the file)."""
    if "text_encoder.token_embedding.weight" not in state:
        return None
    vocab, width = state["text_encoder.token_embedding.weight"].shape
    text_cfg = {"context_length": 77, "vocab_size": vocab, "width": width, "heads": width // 64,
                "layers": count(state, r"text_encoder\.transformer\.resblocks\.(\d+)\.")}
    m = state["contexts"].shape[1]
    dw = state["context_decoder.text_proj.1.weight"].shape[0]
    prompt = PromptConfig(
        num_contexts=m, class_token_budget=state["text_encoder.positional_embedding"].shape[0] - m,
        decoder_width=dw, decoder_heads=max(dw // 64, 1),
        decoder_layers=count(state, r"context_decoder\.decoder\.(\d+)\."), context_decoder=True)
    return text_cfg, int(state["text_encoder.text_projection"].shape[1]), prompt


def resnet_tower(state: dict[str, torch.Tensor], resolution: int) -> tuple[dict, int | None, str]:
    """(open_clip vision_cfg, attention-pool output dim or None, model name) of their CLIP ResNet under
    `backbone.`. Their attention pool always has 32 heads (head width = the stem width); without one
    (their CLIP baselines) the pretrained resolution cannot be read and `resolution` is used."""
    layers = [count(state, rf"backbone\.layer{i}\.(\d+)\.") for i in range(1, 5)]
    width = state["backbone.conv1.weight"].shape[0] * 2
    pos = state.get("backbone.attnpool.positional_embedding")
    if pos is not None:
        resolution = int(round((pos.shape[0] - 1) ** 0.5)) * 32
    pooled = int(state["backbone.attnpool.c_proj.weight"].shape[0]) if pos is not None else None
    vision_cfg = {"image_size": resolution, "layers": layers, "width": width, "head_width": width}
    name = {(3, 4, 6, 3): "RN50", (3, 4, 23, 3): "RN101"}.get(tuple(layers), "RN-custom")
    return vision_cfg, pooled, name


# A text tower open_clip builds for a CLIP baseline's skeleton (the baseline uses none of it).
BASELINE_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 1}


def class_names_for(k: int, meta: dict, base: ModelConfig | None, default: tuple[str, ...]) -> tuple:
    """The names of a checkpoint's `k` classes: meta["CLASSES"], else those of `base` or `default` (the
    task's dataset) when they are `k`."""
    names = meta.get("CLASSES")
    if names is None:
        known = (base.class_names if base is not None else (), default)
        names = next((n for n in known if len(n) == k), None)
    if names is None or len(names) != k:
        held = "none" if names is None else len(names)
        raise ValueError(f"the checkpoint has {k} classes but no matching class names (meta['CLASSES'] holds "
                         f"{held}); pass class_names=[...]")
    return tuple(str(n) for n in names)
