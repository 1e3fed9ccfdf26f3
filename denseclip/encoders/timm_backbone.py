"""Any timm backbone guided by the CLIP text encoder (the paper's "any backbone" setting)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .base import EncoderOutput

# timm's Hub repos hold one of these (timm itself tries the safetensors file first).
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def timm_weights_file(model_name: str) -> Path | None:
    """The ImageNet weights file of a timm model from the Hugging Face cache or Hub (None if timm has no
    Hub repo for it: timm then downloads from its own URL).

    Resolved through `denseclip.hub.hub_file`, so offline or with a Hub that does not answer it fails
    within seconds (WeightsUnavailableError, saying what to do) instead of hanging in retries."""
    from timm.models import get_pretrained_cfg

    from ..hub import WeightsUnavailableError, first_hub_file

    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else list(TIMM_WEIGHT_FILES)
    what = f"timm's ImageNet weights for {model_name!r} ({repo_id})"
    try:
        return first_hub_file(repo_id, names, revision=revision or None, what=what)
    except FileNotFoundError as e:
        raise WeightsUnavailableError(f"{what}: none of {names} exists on the Hub ({e})") from e
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(
                f"{e}. Build the backbone with random weights instead (backbone_pretrained=False, or "
                f"build_model(..., pretrained=False)), or put the file in the Hugging Face cache "
                f"(`huggingface-cli download {repo_id}` on a machine with internet)") from e


class TimmEncoder(nn.Module):
    """A timm model with `features_only=True` -> its last 4 stages + dense/global text-space embeddings.

    `dense` is a 1x1 projection of the last stage to the text dimension `embed_dim` (B, D, H/32, W/32);
    `global` is its spatial mean (B, D). With `embed_dim=None` there is no projection (CLIP-free baseline).
    pretrained=True loads timm's ImageNet weights, found before the model is built (see timm_weights_file).
    """

    def __init__(self, model_name: str, embed_dim: int | None, pretrained: bool = False, **timm_kwargs):
        super().__init__()
        import timm

        if pretrained:
            path = timm_weights_file(model_name)
            if path is not None:  # timm loads the local file: no second trip to the Hub
                overlay = {**timm_kwargs.pop("pretrained_cfg_overlay", {}), "file": str(path)}
                timm_kwargs["pretrained_cfg_overlay"] = overlay
        try:
            self.body = timm.create_model(model_name, features_only=True, pretrained=pretrained,
                                          **timm_kwargs)
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
