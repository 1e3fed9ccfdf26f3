"""What every visual encoder returns, and the positional-embedding resize the CLIP towers share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
    the DenseCLIP authors do at load and at every forward; "bicubic" the same size-based resize, bicubic;
    "bicubic_dino" is DINO's interpolate_pos_encoding, which SCLIP, NACLIP, ClearCLIP and ProxyCLIP use:
    bicubic with the scale factor (dst + 0.1) / src (their sampling positions differ slightly).
    """
    if tuple(src) == tuple(dst):
        return pos
    if mode == "bicubic_dino":
        grid = pos[1:].reshape(1, src[0], src[1], -1).permute(0, 3, 1, 2)
        scale = ((dst[0] + 0.1) / src[0], (dst[1] + 0.1) / src[1])
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(dst[0] * dst[1], -1)])
    from timm.layers import resample_abs_pos_embed  # lazy: timm costs seconds to import

    return resample_abs_pos_embed(pos[None], list(dst), list(src), num_prefix_tokens=1, interpolation=mode,
                                  antialias=False)[0]


def resize_positional_parameter(module: nn.Module, src: tuple[int, int], dst: tuple[int, int]) -> None:
    """`module.positional_embedding` (a CLIP tower's or its attention pool's) resized once from grid `src` to
    `dst` (after loading pretrained weights, as the authors do): a new Parameter, same requires_grad."""
    pos = module.positional_embedding
    with torch.no_grad():
        resized = resize_pos_embed(pos.data, src, dst)
    module.positional_embedding = nn.Parameter(resized, requires_grad=pos.requires_grad)
