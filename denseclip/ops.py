"""The two formulas every part of the package shares.

- `score_maps`: pixel-text matching, the paper's core equation S = norm(z) . norm(t)^T.
- `attention`: multi-head softmax(q k^T / sqrt(d)) v over already projected tokens (CLIP's attention
  pool, the context decoder, the training-free modes of zero-shot segmentation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def score_maps(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pixel with every class.

    dense (B, D, H, W), text (B, K, D) or (K, D) -> S (B, K, H, W) in [-1, 1].
    """
    dense = F.normalize(dense, dim=1)
    text = F.normalize(text, dim=-1)
    if text.ndim == 2:
        return torch.einsum("bchw,kc->bkhw", dense, text)
    return torch.einsum("bchw,bkc->bkhw", dense, text)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
              need_weights: bool = False, bias: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head softmax(q k^T / sqrt(d) + bias) v of projected, batch-first tokens q (B, N, C), k and v
    (B, M, C); bias (N, M) or broadcastable to (B, heads, N, M) is added to the logits.

    Returns the heads' outputs concatenated (B, N, C) and, with need_weights, the attention
    weights (B, heads, N, M) (computed explicitly; otherwise fused scaled_dot_product_attention).
    """
    def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, C / heads)
        return t.unflatten(-1, (num_heads, -1)).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    bias = None if bias is None else bias.to(q.dtype)
    if need_weights:
        logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        weights = (logits if bias is None else logits + bias).softmax(dim=-1)
        out = weights @ v
    else:
        weights, out = None, F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return out.transpose(1, 2).flatten(2), weights
