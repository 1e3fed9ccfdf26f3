"""Training-free dense features from an open_clip ViT: CLIP's own blocks, then a changed last block.

The last block's attention (`attention`), with q, k, v CLIP's own projections of ln_1(x), per head:

    qk      softmax(q k^T / sqrt(d)) v                     CLIP itself ("vanilla")
    qq      softmax(q q^T / sqrt(d)) v                     ClearCLIP
    kk, vv  softmax(k k^T ...) v, softmax(v v^T ...) v
    csa     (softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d))) v      SCLIP
    value   v                                              MaskCLIP
    naclip  softmax(k k^T / sqrt(d) + G) v                 NACLIP, G the Gaussian neighbourhood bias
    nonly   softmax(G * mean(|q_i| |k_j|) / sqrt(d)) v     NACLIP's "nonly" (the mean over the image's heads
                                                           and token pairs: one number per image)

then out_proj; `residual=True` keeps CLIP's residual connection and FFN around it, False returns the
attention branch alone (ClearCLIP's and NACLIP's reduced block). CLIP Surgery instead runs a value-value
path beside CLIP's last blocks (`surgery_path`) and corrects the scores (`feature_surgery`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import attention

NEIGHBOURHOOD = ("naclip", "nonly")


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
    pairs = {"qk": (q, k), "qq": (q, q), "kk": (k, k), "vv": (v, v)}
    if kind == "value":
        return v
    if kind in pairs:
        return attention(*pairs[kind], v, heads)[0]
    if kind == "csa":  # two softmaxes, summed
        return attention(q, q, v, heads)[0] + attention(k, k, v, heads)[0]
    if kind not in NEIGHBOURHOOD:
        raise ValueError(f"unknown attention {kind!r}")
    if bias is None:
        raise ValueError(f"attention {kind!r} needs the neighbourhood bias (neighbourhood_bias(h, w))")
    if kind == "naclip":
        return attention(k, k, v, heads, bias=bias)[0]
    qn, kn = (t.unflatten(-1, (heads, -1)).norm(dim=-1).mean(dim=1) for t in (q, k))  # (B, heads)
    scale = (q.shape[-1] // heads) ** -0.5 * (qn * kn).mean(dim=1)  # mean of |q_i||k_j| per image
    return attention(torch.zeros_like(k), k, v, heads, bias=bias * scale.float()[:, None, None, None])[0]


def training_free_block(blk: nn.Module, x: torch.Tensor, kind: str = "vv", *, residual: bool = False,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """An open_clip ResidualAttentionBlock with its attention replaced by `kind` (see the module doc).

    x: block input tokens (B, N, C), batch first. Returns (B, N, C): ls_1(out_proj(attention)) alone, or
    with residual=True CLIP's residual and FFN around it.
    """
    attn = blk.attn
    y = blk.ln_1(x)
    c = y.shape[-1]
    if kind == "value":
        out = F.linear(y, attn.in_proj_weight[2 * c:], attn.in_proj_bias[2 * c:])
    else:
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        out = last_block_attention(q, k, v, attn.num_heads, kind, bias)
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
        new = new + blk.ls_1(attn.out_proj(attention(v, v, v, attn.num_heads)[0]))
        tokens = tokens + blk.ls_1(attn.out_proj(attention(q, k, v, attn.num_heads)[0]))  # CLIP's own block
        tokens = tokens + blk.ls_2(blk.mlp(blk.ln_2(tokens)))
    return torch.cat([tokens[:, :1], new[:, 1:]], dim=1)


def feature_surgery(scores: torch.Tensor, cls_scores: torch.Tensor | None = None,
                    redundant: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP Surgery's feature surgery on cosine maps S (B, K, H, W). The class weights come once per image
    from the class token's scores cls_scores (B, K): w = K softmax(2 cls_scores); then S' = w S - mean_k(w S)
    (the part common to the classes removed). For one class the authors subtract the empty prompt's
    similarity instead: pass it as `redundant` (B, 1, H, W)."""
    if redundant is not None:
        return scores - redundant
    w = scores.shape[1] * (2 * cls_scores).softmax(dim=1)
    s = scores * w[:, :, None, None]
    return s - s.mean(dim=1, keepdim=True)


def class_token_embedding(enc, blk: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's global embedding (B, D): the last block for the class token alone (= encode_image)."""
    y, attn = blk.ln_1(tokens), blk.attn
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    cls = tokens[:, :1] + blk.ls_1(attn.out_proj(attention(q[:, :1], k, v, attn.num_heads)[0]))
    return enc.project(cls + blk.ls_2(blk.mlp(blk.ln_2(cls))))[:, 0]


Grid = tuple[int, int]
ProxyFn = Callable[..., tuple[torch.Tensor, Grid]]


def vit_dense(enc, x: torch.Tensor, opts, proxy: ProxyFn | None = None, need_global: bool = False):
    """Normalised images (B, 3, H, W) -> dense embeddings (B, D, h, w) and CLIP's global embedding
    (B, D) or None. enc: a CLIPViTEncoder; opts: resolved PredictOptions (attention, residual, pos_embed,
    gaussian_std, surgery_blocks, proxy_beta, proxy_gamma); proxy: ProxyCLIP's attention ("proxy")."""
    tokens, grid = enc.embed(x, opts.pos_embed)
    blocks = enc.visual.transformer.resblocks
    first = max(0, len(blocks) - (opts.surgery_blocks if opts.attention == "surgery" else 1))
    for i in range(first):
        tokens = enc.run_block(i, tokens)
    blk, glob = blocks[-1], None
    if opts.attention == "surgery":
        out = surgery_path(enc, tokens, first)
        glob = enc.project(out[:, 0]) if need_global else None
        out = out[:, 1:]
    elif opts.attention == "proxy":
        out, grid = proxy(blk, tokens, grid, x, opts.proxy_beta, opts.proxy_gamma)
    else:
        bias = neighbourhood_bias(*grid, opts.gaussian_std, tokens.device) \
            if opts.attention in NEIGHBOURHOOD else None
        out = training_free_block(blk, tokens, opts.attention, residual=opts.residual, bias=bias)[:, 1:]
    if need_global and glob is None:
        glob = class_token_embedding(enc, blk, tokens)
    return enc.project(out).transpose(1, 2).reshape(x.shape[0], -1, *grid), glob
