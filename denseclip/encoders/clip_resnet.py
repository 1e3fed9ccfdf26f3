"""CLIP ResNet (open_clip ModifiedResNet) as a dense encoder.

The open_clip tower is kept intact as the child `visual` (parameter names `visual.conv1.weight`,
`visual.layer1.0.conv1.weight`, `visual.attnpool.q_proj.weight`, ...); its stage features come from
open_clip's own `forward_intermediates`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import attention
from .base import EncoderOutput, grid_of, resize_pos_embed, resize_positional_parameter


class CLIPResNetEncoder(nn.Module):
    """open_clip ModifiedResNet -> C2..C5 stage features + attention-pooled global and dense embeddings.

    The attention pool runs on [mean token; every position] with every token as a query, so each
    position gets its own pooled embedding: `dense` (B, D, H/32, W/32). Token 0 is CLIP's global
    embedding: at the pretrained resolution it equals open_clip's `encode_image`.

    pos_embed: how the (input_resolution/32)^2 positional grid meets an H x W feature map: "resize"
    (bilinear, the authors' segmentation) or "crop" to the top-left H x W (the authors' detection tower,
    so a position keeps its embedding whatever the aspect ratio; larger maps fall back to resizing).
    embeddings=False drops the attention pool (the CLIP+FPN baseline: stage features only, and no
    parameters without gradients under DDP).
    """

    feature_strides = (4, 8, 16, 32)

    def __init__(self, visual: nn.Module, input_resolution: int | None = None, pos_embed: str = "resize",
                 embeddings: bool = True):
        super().__init__()
        if pos_embed not in ("resize", "crop"):
            raise ValueError(f"pos_embed must be 'resize' or 'crop', got {pos_embed!r}")
        self.visual = visual
        self.pos_embed = pos_embed
        stages = (visual.layer1, visual.layer2, visual.layer3, visual.layer4)
        self.feature_channels = tuple(s[-1].conv3.out_channels for s in stages)
        self.num_heads = visual.attnpool.num_heads
        self.embed_dim = visual.attnpool.c_proj.out_features if embeddings else None
        self.pos_grid = grid_of(visual.attnpool.positional_embedding.shape[0] - 1)
        if not embeddings:
            del visual.attnpool
        elif input_resolution is not None:
            self.set_input_resolution(input_resolution)

    def set_input_resolution(self, resolution: int) -> None:
        """The attention pool's positional embedding resized once to the grid of `resolution / 32`."""
        grid = (resolution // 32, resolution // 32)
        resize_positional_parameter(self.visual.attnpool, self.pos_grid, grid)
        self.pos_grid = grid

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [C2, C3, C4, C5] at strides 4, 8, 16, 32, in the weights' dtype (channels-last
        for bfloat16 / float16 weights: oneDNN's and cuDNN's fast low-precision convolutions)."""
        dtype = self.visual.conv1.weight.dtype
        low = dtype in (torch.bfloat16, torch.float16)
        x = x.to(dtype, memory_format=torch.channels_last if low else torch.preserve_format)
        out = self.visual.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        return out["image_intermediates"]

    def pool_tokens(self, c5: torch.Tensor) -> torch.Tensor:
        """C5 (B, C, H, W) -> tokens (B, 1 + H*W, C) with positional embedding (fitted to H x W)."""
        _, _, h, w = c5.shape
        tokens = c5.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        pos = self.visual.attnpool.positional_embedding
        gh, gw = self.pos_grid
        if self.pos_embed == "crop" and h <= gh and w <= gw:
            pos = torch.cat([pos[:1], pos[1:].reshape(gh, gw, -1)[:h, :w].reshape(h * w, -1)])
        else:
            pos = resize_pos_embed(pos, self.pos_grid, (h, w))
        return tokens + pos.to(tokens.dtype)

    def attention_pool(self, c5: torch.Tensor, need_weights: bool = False):
        """Full attention pool, every token a query: global (B, D), dense (B, D, H, W) and, with
        need_weights, the attention weights (B, heads, 1 + H*W, 1 + H*W) (token 0 = the mean token)."""
        b, _, h, w = c5.shape
        pool = self.visual.attnpool
        x = self.pool_tokens(c5)
        out, weights = attention(pool.q_proj(x), pool.k_proj(x), pool.v_proj(x), self.num_heads, need_weights)
        out = pool.c_proj(out)
        dense = out[:, 1:].transpose(1, 2).reshape(b, -1, h, w)
        return (out[:, 0], dense, weights) if need_weights else (out[:, 0], dense)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        feats = self.forward_features(x)
        if self.embed_dim is None:
            return EncoderOutput(features=feats, global_embedding=None, dense=None)
        global_embedding, dense = self.attention_pool(feats[-1])
        return EncoderOutput(features=feats, global_embedding=global_embedding, dense=dense)
