"""ProxyCLIP (Lan et al., ECCV 2024): the last CLIP block attends with a vision foundation model's
patch-feature similarities (a DINO / DINOv2 ViT through timm) instead of its own query-key products.

    A = softmax(mask((cos(f_i, f_j) - beta * mean(cos)) * gamma))     f: the proxy's last-layer patch features
    out = out_proj(A v)                                               v: CLIP's values at the proxy grid

Entries below zero are masked out (each token always keeps itself, so no row is empty); no residual, no
FFN; the dense maps come out at the proxy's grid (stride 8 for DINO ViT-B/8). The proxy's weights come
from the same places as CLIP's: DENSECLIP_WEIGHTS_DIR (as `<timm name>.safetensors`), then the
Hugging Face Hub (timm's repo), failing fast offline with a WeightsUnavailableError.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CLIP_MEAN, CLIP_STD
from ..hub import WeightsUnavailableError, first_hub_file


def proxy_weights_file(name: str) -> Path:
    """The released timm weights of `name`: from DENSECLIP_WEIGHTS_DIR, else the Hub (or its cache)."""
    import timm

    from ..clip import WEIGHTS_DIR_ENV, weights_dir_file

    found = weights_dir_file(name, "timm")
    if found:
        return Path(found)
    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    help_ = (f"put {name}.safetensors in the folder named by {WEIGHTS_DIR_ENV}, pass "
             "proxy_weights='/path/file', or use method='naclip', which needs no second model")
    if not repo:
        raise WeightsUnavailableError(f"ProxyCLIP proxy {name!r} has no weights on the Hub in timm; {help_}")
    try:
        return first_hub_file(repo, ["model.safetensors", "pytorch_model.bin"],
                              what=f"ProxyCLIP proxy weights {name} ({repo})")
    except FileNotFoundError as e:
        raise WeightsUnavailableError(f"no weights file for {name} in {repo} ({e}); {help_}") from e
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(f"{e}; {help_}") from e


def create_proxy(name: str = "vit_base_patch8_224.dino", weights: str | None = "timm") -> nn.Module:
    """A timm ViT for any input size (dynamic_img_size), eval mode. weights: "timm" (its released
    weights, see proxy_weights_file), a local file, or None (random: tests, speed checks)."""
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}: ProxyCLIP's proxy is a timm ViT, e.g. "
                         "vit_base_patch8_224.dino (its default) or vit_base_patch14_reg4_dinov2.lvd142m")
    kwargs = {"num_classes": 0, "dynamic_img_size": True}
    if weights is None:
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    path = proxy_weights_file(name) if weights == "timm" else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"ProxyCLIP proxy weights file not found: {path}")
    overlay = {"file": str(path)}  # timm loads (and adapts) the released file itself
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


def proxy_attention(feats: torch.Tensor, beta: float = 1.2, gamma: float = 3.0) -> torch.Tensor:
    """Proxy features (B, C, H, W) -> attention (B, HW, HW): the module doc's A."""
    f = F.normalize(feats.flatten(2).float(), dim=1)
    sim = f.transpose(1, 2) @ f
    sim = (sim - sim.mean(dim=(1, 2), keepdim=True) * beta) * gamma
    keep = (sim >= 0) | torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    return sim.masked_fill(~keep, float("-inf")).softmax(dim=-1)


class ProxyAttention(nn.Module):
    """The proxy model and ProxyCLIP's attention for the last CLIP block (vit_dense's `proxy`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))  # ImageNet's, as DINO's
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        patch = model.patch_embed.patch_size
        self.patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised images (B, 3, H, W) -> the proxy's last-layer patch features (B, C, H/p, W/p)."""
        def stats(values):
            return torch.tensor(values, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)

        x = (x * stats(CLIP_STD) + stats(CLIP_MEAN) - stats(self.mean)) / stats(self.std)
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
        h, w = x.shape[2] // self.patch, x.shape[3] // self.patch
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def forward(self, blk: nn.Module, tokens: torch.Tensor, grid: tuple[int, int], x: torch.Tensor,
                beta: float = 1.2, gamma: float = 3.0):
        """The last block: tokens (B, 1 + h*w, C) -> (B, H*W, C) at the proxy grid (H, W), and (H, W)."""
        feats = self.features(x)
        a = proxy_attention(feats, beta, gamma)
        attn, c = blk.attn, tokens.shape[-1]
        v = F.linear(blk.ln_1(tokens)[:, 1:], attn.in_proj_weight[2 * c:], attn.in_proj_bias[2 * c:])
        v = v.transpose(1, 2).reshape(v.shape[0], c, *grid)
        v = F.interpolate(v.float(), size=feats.shape[2:], mode="bilinear", align_corners=False)
        out = a @ v.flatten(2).transpose(1, 2)
        return blk.ls_1(attn.out_proj(out.to(tokens.dtype))), tuple(feats.shape[2:])
