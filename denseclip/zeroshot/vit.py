"""Training-free dense features from an open_clip ViT: CLIP's own blocks, then a changed last block.

The last block's attention (`attention`), with q, k, v CLIP's own projections of ln_1(x), per head:

    qk      softmax(q k^T / sqrt(d)) v                     CLIP itself ("vanilla")
    qq      softmax(q q^T / sqrt(d)) v                     ClearCLIP
    kk, vv  softmax(k k^T ...) v, softmax(v v^T ...) v
    csa     (softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d))) v      SCLIP
    value   v                                              MaskCLIP
    naclip  softmax(k k^T / sqrt(d) + G) v                 NACLIP, G the Gaussian neighbourhood bias
    gav     softmax(q k^T / sqrt(d) + G |q_i| |k_j| / sqrt(d)) v          NACLIP's "gav" strategy
    nonly   softmax(G |q_i| |k_j| / sqrt(d)) v                              NACLIP's "nonly" strategy

then out_proj; `residual=True` keeps CLIP's residual connection and FFN around it, False returns the
attention branch alone (ClearCLIP's and NACLIP's reduced block). CLIP Surgery instead runs a value-value
path beside CLIP's last blocks (`surgery_path`) and corrects the scores (`feature_surgery`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NEIGHBOURHOOD = ("naclip", "gav", "nonly")


@dataclass(frozen=True)
class ViTPlan:
    """What `vit_dense` runs: the last block's attention (or "surgery" / "proxy") and its options."""

    attention: str
    residual: bool
    pos_embed: str = "bilinear"
    gaussian_std: float = 5.0
    surgery_blocks: int = 6


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
            bias: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head softmax(q k^T / sqrt(d) + bias) v of batch-first (B, N, C) tokens -> (B, N, C)."""
    def split(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    mask = None if bias is None else bias.to(q.dtype)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


@functools.lru_cache(maxsize=8)
def _bias(h: int, w: int, std: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    p = torch.stack([ys.flatten(), xs.flatten()], dim=1).double()
    g = torch.exp(-(p[:, None] - p[None]).pow(2).sum(-1) / (2 * std ** 2))
    return F.pad(g, (1, 0, 1, 0)).to(device=device, dtype=dtype)


def neighbourhood_bias(h: int, w: int, std: float = 5.0, device="cpu",
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NACLIP's bias (1 + h*w, 1 + h*w): exp(-|p_i - p_j|^2 / (2 std^2)) between the patches' grid
    positions (row-major), 0 in the class token's row and column. Cached per grid."""
    return _bias(int(h), int(w), float(std), str(device), dtype)


def last_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, kind: str,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """The `kind` of attention in the module doc, (B, N, C) each -> (B, N, C) (before out_proj)."""
    if kind == "value":
        return v
    if kind == "qk":
        return _attend(q, k, v, heads)
    if kind in ("qq", "kk", "vv"):
        a = {"qq": q, "kk": k, "vv": v}[kind]
        return _attend(a, a, v, heads)
    if kind == "csa":  # two softmaxes, summed
        return _attend(q, q, v, heads) + _attend(k, k, v, heads)
    if kind not in NEIGHBOURHOOD:
        raise ValueError(f"unknown attention {kind!r}")
    if bias is None:
        raise ValueError(f"attention {kind!r} needs the neighbourhood bias (neighbourhood_bias(h, w))")
    if kind == "naclip":
        return _attend(k, k, v, heads, bias)
    qn, kn = (t.unflatten(-1, (heads, -1)).norm(dim=-1).transpose(1, 2) for t in (q, k))  # (B, heads, N)
    scaled = bias * qn[..., :, None] * kn[..., None, :] * (q.shape[-1] // heads) ** -0.5
    return _attend(q if kind == "gav" else torch.zeros_like(q), k, v, heads, scaled)


def training_free_block(blk: nn.Module, x: torch.Tensor, attention: str = "vv", *, residual: bool = False,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """An open_clip ResidualAttentionBlock with its attention replaced (see the module doc).

    x: block input tokens (B, N, C), batch first. Returns (B, N, C): ls_1(out_proj(attention)) alone, or
    with residual=True CLIP's residual and FFN around it.
    """
    attn = blk.attn
    y = blk.ln_1(x)
    c = y.shape[-1]
    if attention == "value":
        out = F.linear(y, attn.in_proj_weight[2 * c:], attn.in_proj_bias[2 * c:])
    else:
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        out = last_block_attention(q, k, v, attn.num_heads, attention, bias)
    out = blk.ls_1(attn.out_proj(out))
    if not residual:
        return out
    out = x + out
    return out + blk.ls_2(blk.mlp(blk.ln_2(out)))


def surgery_path(enc, tokens: torch.Tensor, first: int) -> torch.Tensor:
    """CLIP Surgery's architecture: from block `first` on, a new path adds each block's value-value
    attention of the original path's tokens (FFN skipped) while the original path runs CLIP's own blocks.
    tokens: the input of block `first`. Returns the new path (B, N, C) with the original class token.
    Both paths share each block's ln_1 and q, k, v projection (one projection, two attentions)."""
    blocks = enc.visual.transformer.resblocks
    new = tokens
    for blk in blocks[first:]:
        attn = blk.attn
        q, k, v = F.linear(blk.ln_1(tokens), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        new = new + blk.ls_1(attn.out_proj(_attend(v, v, v, attn.num_heads)))
        tokens = tokens + blk.ls_1(attn.out_proj(_attend(q, k, v, attn.num_heads)))  # CLIP's own block
        tokens = tokens + blk.ls_2(blk.mlp(blk.ln_2(tokens)))
    return torch.cat([tokens[:, :1], new[:, 1:]], dim=1)


def feature_surgery(scores: torch.Tensor, redundant: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP Surgery's feature surgery on cosine maps (B, K, H, W): with w = K softmax(2 S) over the
    classes, S' = w S - mean_k(w S) (the class-common part removed). For one class the authors subtract
    the empty prompt's similarity instead: pass it as `redundant` (B, 1, H, W)."""
    if redundant is not None:
        return scores - redundant
    s = scores.shape[1] * (2 * scores).softmax(dim=1) * scores
    return s - s.mean(dim=1, keepdim=True)


def class_token_embedding(enc, blk: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's global embedding (B, D): the last block for the class token alone (= encode_image)."""
    y, attn = blk.ln_1(tokens), blk.attn
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    cls = tokens[:, :1] + blk.ls_1(attn.out_proj(_attend(q[:, :1], k, v, attn.num_heads)))
    return enc.project(cls + blk.ls_2(blk.mlp(blk.ln_2(cls))))[:, 0]


Grid = tuple[int, int]
ProxyFn = Callable[[nn.Module, torch.Tensor, Grid, torch.Tensor], tuple[torch.Tensor, Grid]]


def vit_dense(enc, x: torch.Tensor, plan: ViTPlan, proxy: ProxyFn | None = None, need_global: bool = False):
    """Normalised images (B, 3, H, W) -> dense embeddings (B, D, h, w) and CLIP's global embedding
    (B, D) or None. enc: a CLIPViTEncoder; proxy: ProxyCLIP's attention (plan.attention == "proxy")."""
    tokens, grid = enc.embed(x, plan.pos_embed)
    blocks = enc.visual.transformer.resblocks
    first = max(0, len(blocks) - (plan.surgery_blocks if plan.attention == "surgery" else 1))
    for i in range(first):
        tokens = enc.run_block(i, tokens)
    blk, glob = blocks[-1], None
    if plan.attention == "surgery":
        out = surgery_path(enc, tokens, first)
        glob = enc.project(out[:, 0]) if need_global else None
        out = out[:, 1:]
    elif plan.attention == "proxy":
        out, grid = proxy(blk, tokens, grid, x)
    else:
        bias = neighbourhood_bias(*grid, plan.gaussian_std, tokens.device) \
            if plan.attention in NEIGHBOURHOOD else None
        out = training_free_block(blk, tokens, plan.attention, residual=plan.residual, bias=bias)[:, 1:]
    if need_global and glob is None:
        glob = class_token_embedding(enc, blk, tokens)
    return enc.project(out).transpose(1, 2).reshape(x.shape[0], -1, *grid), glob
