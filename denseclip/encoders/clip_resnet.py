"""CLIP ResNet (open_clip ModifiedResNet) as a dense encoder.

The tower's modules are adopted as our own children, so parameter names stay open_clip's
(`conv1.weight`, `layer1.0.conv1.weight`, `attnpool.q_proj.weight`, ...), which are also the names the
DenseCLIP authors' checkpoints use under `backbone.`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import EncoderOutput, grid_of, resize_pos_embed

_STEM = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool")
_STAGES = ("layer1", "layer2", "layer3", "layer4")


class CLIPResNetEncoder(nn.Module):
    """open_clip ModifiedResNet -> C2..C5 stage features + attention-pooled global and dense embeddings.

    The attention pool runs on [mean token; every position] with every token as a query, so each
    position gets its own pooled embedding: `dense` (B, D, H/32, W/32). Token 0 is CLIP's global
    embedding: at the pretrained resolution it equals open_clip's `encode_image`.

    pos_embed: how the (input_resolution/32)^2 positional grid meets an H x W feature map: "resize"
    (bilinear, the authors' segmentation) or "crop" to the top-left H x W (the authors' detection tower,
    so a position keeps its embedding whatever the aspect ratio; larger maps fall back to resizing).
    """

    feature_strides = (4, 8, 16, 32)

    def __init__(self, tower: nn.Module, input_resolution: int | None = None, pos_embed: str = "resize"):
        super().__init__()
        if pos_embed not in ("resize", "crop"):
            raise ValueError(f"pos_embed must be 'resize' or 'crop', got {pos_embed!r}")
        self.pos_embed = pos_embed
        for name in _STEM + _STAGES + ("attnpool",):
            self.add_module(name, getattr(tower, name))
        self.feature_channels = tuple(getattr(self, s)[-1].conv3.out_channels for s in _STAGES)
        self.embed_dim = self.attnpool.c_proj.out_features
        self.num_heads = self.attnpool.num_heads
        self.pos_grid = grid_of(self.attnpool.positional_embedding.shape[0] - 1)
        if input_resolution is not None:
            self.set_input_resolution(input_resolution)

    def set_input_resolution(self, resolution: int) -> None:
        """Resize the attention pool's positional embedding once to the grid of `resolution / 32`.

        Call after loading pretrained weights (the authors resize at load: 512 px -> 16x16).
        """
        grid = (resolution // 32, resolution // 32)
        pool = self.attnpool
        with torch.no_grad():
            pos = resize_pos_embed(pool.positional_embedding.data, self.pos_grid, grid)
        pool.positional_embedding = nn.Parameter(pos, requires_grad=pool.positional_embedding.requires_grad)
        self.pos_grid = grid

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [C2, C3, C4, C5] at strides 4, 8, 16, 32."""
        x = self.stem(x.to(self.conv1.weight.dtype))
        feats = []
        for s in _STAGES:
            x = getattr(self, s)(x)
            feats.append(x)
        return feats

    def pool_tokens(self, c5: torch.Tensor) -> torch.Tensor:
        """C5 (B, C, H, W) -> tokens (B, 1 + H*W, C) with positional embedding (resized to H x W)."""
        b, c, h, w = c5.shape
        tokens = c5.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        pos = self.attnpool.positional_embedding
        gh, gw = self.pos_grid
        if self.pos_embed == "crop" and h <= gh and w <= gw:
            pos = torch.cat([pos[:1], pos[1:].reshape(gh, gw, -1)[:h, :w].reshape(h * w, -1)])
        else:
            pos = resize_pos_embed(pos, self.pos_grid, (h, w))
        return tokens + pos.to(tokens.dtype)

    def attention_pool(self, c5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full attention pool, every token a query. Returns global (B, D) and dense (B, D, H, W)."""
        b, _, h, w = c5.shape
        pool = self.attnpool
        x = self.pool_tokens(c5)
        n, c = x.shape[1], x.shape[2]
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C/heads)
            return t.reshape(b, n, heads, c // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(pool.q_proj(x)), split(pool.k_proj(x)), split(pool.v_proj(x)))
        out = pool.c_proj(out.transpose(1, 2).reshape(b, n, c))
        dense = out[:, 1:].transpose(1, 2).reshape(b, -1, h, w)
        return out[:, 0], dense

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        feats = self.forward_features(x)
        global_embedding, dense = self.attention_pool(feats[-1])
        return EncoderOutput(features=feats, global_embedding=global_embedding, dense=dense)
