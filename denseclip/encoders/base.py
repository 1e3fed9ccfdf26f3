"""What every visual encoder returns, and the positional-embedding resize the CLIP towers share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class EncoderOutput:
    """Output of a visual encoder.

    features: stage features, strides 4/8/16/32 (list of (B, C_i, H_i, W_i)).
    global_embedding: (B, D) image embedding in the text space (None for a baseline without text).
    dense: (B, D, h, w) dense pixel embeddings in the text space (None for a baseline without text).
    """

    features: list[torch.Tensor]
    global_embedding: torch.Tensor | None
    dense: torch.Tensor | None


def grid_of(num_positions: int) -> tuple[int, int]:
    """Square grid (h, w) of a flattened spatial positional embedding with `num_positions` entries."""
    side = int(round(math.sqrt(num_positions)))
    if side * side != num_positions:
        raise ValueError(f"positional embedding with {num_positions} spatial entries is not a square grid")
    return side, side


def resize_pos_embed(pos: torch.Tensor, src: tuple[int, int], dst: tuple[int, int],
                     mode: str = "bilinear") -> torch.Tensor:
    """A CLIP positional embedding (1 + h*w, C) from grid `src` to grid `dst` (timm's resample).

    The first row (class / mean token) is kept. "bilinear" (align_corners=False, no antialias) is what
    the DenseCLIP authors do at load and at every forward; "bicubic" is what SCLIP, NACLIP, ClearCLIP
    and MaskCLIP do.
    """
    if tuple(src) == tuple(dst):
        return pos
    from timm.layers import resample_abs_pos_embed  # lazy: timm costs seconds to import

    return resample_abs_pos_embed(pos[None], list(dst), list(src), num_prefix_tokens=1, interpolation=mode,
                                  antialias=False)[0]
