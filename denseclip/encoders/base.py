"""What every visual encoder returns, and the positional-embedding resize they share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def resize_pos_embed(pos: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Resize a CLIP positional embedding (1 + h*w, C) from grid `src` to grid `dst`.

    The first row (class / mean token) is kept; the spatial rows are resized with bilinear
    interpolation, align_corners=False, as the DenseCLIP authors do at load and at every forward.
    """
    if tuple(src) == tuple(dst):
        return pos
    cls_pos, spatial = pos[:1], pos[1:]
    c = pos.shape[-1]
    spatial = spatial.reshape(1, src[0], src[1], c).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, size=dst, mode="bilinear", align_corners=False)
    spatial = spatial.reshape(c, dst[0] * dst[1]).permute(1, 0)
    return torch.cat([cls_pos, spatial], dim=0)
