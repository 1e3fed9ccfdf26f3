"""CLIP ViT (open_clip VisionTransformer) as a dense encoder with the authors' multi-scale necks.

The open_clip tower is kept intact as the child `visual` (`visual.conv1`, `visual.class_embedding`,
`visual.positional_embedding`, `visual.transformer.resblocks.N.*`, `visual.ln_post`, `visual.proj`);
the necks are `fpn1`..`fpn4` as in the authors' code. The blocks run in our own loop rather than
open_clip's `forward_intermediates`, which has no stochastic depth, no per-forward positional-embedding
resize and not the authors' class-token embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import EncoderOutput, grid_of, resize_pos_embed, resize_positional_parameter


def _necks(width: int, patch_size: int) -> dict[str, nn.Module]:
    """Stride-16 token maps -> strides 4/8/16/32 (the authors' fpn1..fpn4 for patch 16; 8 also works)."""
    if patch_size == 16:
        return {
            "fpn1": nn.Sequential(nn.GroupNorm(1, width), nn.ConvTranspose2d(width, width, 2, 2),
                                  nn.BatchNorm2d(width), nn.GELU(), nn.ConvTranspose2d(width, width, 2, 2)),
            "fpn2": nn.Sequential(nn.GroupNorm(1, width), nn.ConvTranspose2d(width, width, 2, 2)),
            "fpn3": nn.GroupNorm(1, width),
            "fpn4": nn.Sequential(nn.GroupNorm(1, width), nn.MaxPool2d(2, 2)),
        }
    if patch_size == 8:
        return {
            "fpn1": nn.Sequential(nn.GroupNorm(1, width), nn.ConvTranspose2d(width, width, 2, 2)),
            "fpn2": nn.GroupNorm(1, width),
            "fpn3": nn.Sequential(nn.GroupNorm(1, width), nn.MaxPool2d(2, 2)),
            "fpn4": nn.Sequential(nn.GroupNorm(1, width), nn.MaxPool2d(4, 4)),
        }
    raise ValueError(f"multi-scale necks exist for patch size 16 or 8, not {patch_size}; "
                     "use with_necks=False for dense embeddings only (zero-shot)")


class CLIPViTEncoder(nn.Module):
    """open_clip VisionTransformer -> 4 stage features + global and dense embeddings.

    Tokens after the blocks in `out_indices` become (B, width, H/p, W/p) maps, turned into strides
    4/8/16/32 by the necks. `dense` = ln_post(last tokens) @ proj (B, D, H/p, W/p); `global` is the
    class token through the same path.

    official_cls=True reproduces the authors' forward (the class token receives class_embedding twice:
    as the token and added to its positional term) -- needed for their released ViT checkpoint.
    official_cls=False is open_clip-faithful (zero-shot): `global` equals `encode_image`.
    embeddings=False drops ln_post and proj (the CLIP+FPN baseline has no text space).
    """

    def __init__(self, visual: nn.Module, input_resolution: int | None = None,
                 out_indices: tuple[int, ...] = (3, 5, 7, 11), official_cls: bool = True,
                 with_necks: bool = True, drop_path_rate: float = 0.0, embeddings: bool = True):
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
            raise ValueError("CLIP ViTs with attentional pooling / final LN after pool are not supported")
        self.visual = visual
        self.patch_size = visual.conv1.kernel_size[0]
        self.width = visual.conv1.out_channels
        self.embed_dim = visual.proj.shape[1] if embeddings else None
        self.pos_grid = grid_of(visual.positional_embedding.shape[0] - 1)
        n_blocks = len(visual.transformer.resblocks)
        if any(i < 0 or i >= n_blocks for i in out_indices):
            raise ValueError(f"out_indices {out_indices} out of range for a ViT with {n_blocks} blocks")
        self.out_indices = tuple(out_indices)
        self.official_cls = official_cls
        self.drop_path_rates = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.with_necks = with_necks
        if with_necks:
            for name, module in _necks(self.width, self.patch_size).items():
                self.add_module(name, module)
        self.feature_strides = (4, 8, 16, 32) if with_necks else (self.patch_size,) * 4
        self.feature_channels = (self.width,) * 4
        if not embeddings:
            visual.proj, visual.ln_post = None, nn.Identity()
        if input_resolution is not None:
            self.set_input_resolution(input_resolution)

    def set_input_resolution(self, resolution: int) -> None:
        """Resize the positional embedding once to the grid of `resolution / patch` (640 -> 40x40)."""
        grid = (resolution // self.patch_size, resolution // self.patch_size)
        resize_positional_parameter(self.visual, self.pos_grid, grid)
        self.pos_grid = grid

    def embed(self, x: torch.Tensor, pos_mode: str = "bilinear") -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> tokens (B, 1 + h*w, width) after ln_pre, and the grid (h, w)."""
        v = self.visual
        x = v.conv1(x.to(v.conv1.weight.dtype))
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, c)
        pos = resize_pos_embed(v.positional_embedding, self.pos_grid, (h, w), pos_mode).to(x.dtype)
        if self.official_cls:
            pos = torch.cat([pos[:1] + v.class_embedding.to(x.dtype), pos[1:]], dim=0)
        x = torch.cat([cls, x], dim=1) + pos
        return v.ln_pre(x), (h, w)

    def run_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block i on batch-first tokens, with stochastic depth while training."""
        blk = self.visual.transformer.resblocks[i]
        batch_first = getattr(self.visual.transformer, "batch_first", True)
        p = self.drop_path_rates[i] if self.training else 0.0
        if p == 0.0:
            return blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
        # Same computation as open_clip's ResidualAttentionBlock, with drop_path on both branches.
        from timm.layers import drop_path  # lazy: timm costs seconds to import

        q = blk.ln_1(x) if batch_first else blk.ln_1(x).transpose(0, 1)
        attn = blk.attn(q, q, q, need_weights=False)[0]
        attn = attn if batch_first else attn.transpose(0, 1)
        x = x + drop_path(blk.ls_1(attn), p, True)
        return x + drop_path(blk.ls_2(blk.mlp(blk.ln_2(x))), p, True)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_post then proj: tokens (B, N, width) -> (B, N, D)."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        x, (h, w) = self.embed(x)
        b = x.shape[0]
        maps = []
        for i in range(len(self.visual.transformer.resblocks)):
            x = self.run_block(i, x)
            if i in self.out_indices:
                maps.append(x[:, 1:].transpose(1, 2).reshape(b, -1, h, w).contiguous())
        if self.with_necks:
            maps = [neck(m) for neck, m in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), maps)]
        if self.embed_dim is None:
            return EncoderOutput(features=maps, global_embedding=None, dense=None)
        out = self.project(x)
        dense = out[:, 1:].transpose(1, 2).reshape(b, -1, h, w)
        return EncoderOutput(features=maps, global_embedding=out[:, 0], dense=dense)
