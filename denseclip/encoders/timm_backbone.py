"""Any timm backbone guided by the CLIP text encoder (the paper's "any backbone" setting)."""

from __future__ import annotations

import torch
from torch import nn

from .base import EncoderOutput


class TimmEncoder(nn.Module):
    """A timm model with `features_only=True` -> its last 4 stages + dense/global text-space embeddings.

    `dense` is a 1x1 projection of the last stage to the text dimension `embed_dim` (B, D, H/32, W/32);
    `global` is its spatial mean (B, D). With `embed_dim=None` there is no projection (CLIP-free baseline).
    """

    def __init__(self, model_name: str, embed_dim: int | None, pretrained: bool = False, **timm_kwargs):
        super().__init__()
        import timm

        try:
            self.body = timm.create_model(model_name, features_only=True, pretrained=pretrained, **timm_kwargs)
        except RuntimeError as e:  # unknown model names raise RuntimeError in timm
            raise ValueError(f"timm could not build backbone {model_name!r}: {e}") from e
        info = self.body.feature_info
        if len(info.channels()) < 4:
            raise ValueError(f"timm backbone {model_name!r} exposes {len(info.channels())} stages; need 4")
        self.feature_channels = tuple(info.channels()[-4:])
        self.feature_strides = tuple(info.reduction()[-4:])
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(self.feature_channels[-1], embed_dim, 1) if embed_dim else None
        # Some timm models (Swin, ...) return NHWC features; we hand NCHW to the FPN.
        self.channels_last_output = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        feats = self.body(x)[-4:]
        if self.channels_last_output:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        if self.proj is None:
            return EncoderOutput(features=feats, global_embedding=None, dense=None)
        dense = self.proj(feats[-1])
        return EncoderOutput(features=feats, global_embedding=dense.mean(dim=(2, 3)), dense=dense)
