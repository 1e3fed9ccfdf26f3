"""Context-aware prompting: the learnable-context text encoder and the vision-to-language decoder.

Text side of DenseCLIP (paper, Sec. 3.3):
  t  = TextEncoder([SOT][ctx_1..ctx_M][class tokens][EOT])       learnable contexts, (K, D)
  t' = t + gamma * ContextDecoder(t, [z_global; z_dense])         post-model prompting, (B, K, D)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

from .config import ModelConfig, PromptConfig
from .ops import attention, score_maps
from .vocab import clean_class_names


@lru_cache(maxsize=1)
def clip_tokenizer():
    """open_clip's BPE tokenizer (the one CLIP was trained with), built once."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize_class_names(class_names: Sequence[str], budget: int) -> torch.Tensor:
    """Class names -> (K, budget) token ids [SOT] name [EOT] 0... .

    A name that needs more than `budget` tokens is an error (never silently truncated): raise the
    budget (`class_token_budget`) or shorten the name.
    """
    if len(class_names) == 0:
        raise ValueError("class_names is empty: give at least one class name")
    tok = clip_tokenizer()
    out = torch.zeros(len(class_names), budget, dtype=torch.long)
    for i, name in enumerate(class_names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class name #{i} ({name!r}) is empty or not a string")
        ids = [tok.sot_token_id, *tok.encode(name), tok.eot_token_id]
        if len(ids) > budget:
            raise ValueError(
                f"class name {name!r} needs {len(ids)} tokens ([SOT] + {len(ids) - 2} + [EOT]) but the "
                f"class-token budget is {budget}; raise class_token_budget or shorten the name")
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def phrase_embeddings(token_embedding: nn.Embedding, phrase: str) -> torch.Tensor:
    """Token embeddings (M, width) of a phrase without SOT/EOT, e.g. "a photo of a" -> 4 vectors."""
    ids = clip_tokenizer().encode(phrase)
    if not ids:
        raise ValueError(f"context phrase {phrase!r} has no tokens")
    return token_embedding.weight[torch.tensor(ids, device=token_embedding.weight.device)].detach().clone()


class ContextTextEncoder(nn.Module):
    """CLIP's text transformer over [SOT][ctx_1..ctx_M][class tokens][EOT].

    Adopts the text modules of an open_clip CLIP model (names: `transformer`, `token_embedding`,
    `positional_embedding`, `ln_final`, `text_projection`, as in the authors' `text_encoder.*`).
    The positional embedding is truncated to M + budget positions; a causal mask is used; the output
    is taken at the EOT position (argmax of the class tokens + M) and projected.
    """

    def __init__(self, clip_model: nn.Module, num_contexts: int, class_token_budget: int):
        super().__init__()
        for name in ("transformer", "token_embedding", "ln_final"):
            if not hasattr(clip_model, name):
                raise TypeError(f"{type(clip_model).__name__} has no CLIP text tower attribute {name!r}; "
                                "DenseCLIP needs an open_clip CLIP model with the standard text transformer")
            self.add_module(name, getattr(clip_model, name))
        length = num_contexts + class_token_budget
        pos = clip_model.positional_embedding
        if length > pos.shape[0]:
            raise ValueError(f"num_contexts + class_token_budget = {length} exceeds CLIP's "
                             f"{pos.shape[0]} positions")
        self.positional_embedding = nn.Parameter(pos.detach()[:length].clone())
        proj = clip_model.text_projection
        if not isinstance(proj, nn.Parameter):  # a Linear in some open_clip models
            proj = nn.Parameter(proj.weight.detach().t().clone())
        self.text_projection = proj
        self.num_contexts, self.class_token_budget = num_contexts, class_token_budget
        self.width = self.token_embedding.embedding_dim
        self.embed_dim = self.text_projection.shape[1]
        self.batch_first = getattr(self.transformer, "batch_first", True)
        mask = torch.full((length, length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """tokens (K, budget) and contexts (B, M, width) -> text embeddings (B, K, D)."""
        k, n1 = tokens.shape
        b, m, c = contexts.shape
        if n1 != self.class_token_budget or m != self.num_contexts:
            raise ValueError(f"expected tokens (K, {self.class_token_budget}) and contexts "
                             f"(B, {self.num_contexts}, {self.width}); got {tuple(tokens.shape)} and "
                             f"{tuple(contexts.shape)}")
        x_text = self.token_embedding(tokens).to(contexts.dtype)  # (K, N1, C)
        x_text = x_text.unsqueeze(0).expand(b, k, n1, c)
        ctx = contexts.unsqueeze(1).expand(b, k, m, c)
        x = torch.cat([x_text[:, :, :1], ctx, x_text[:, :, 1:]], dim=2).reshape(b * k, n1 + m, c)
        x = x + self.positional_embedding.to(x.dtype)
        mask = self.attn_mask.to(x.dtype)
        if self.batch_first:
            x = self.transformer(x, attn_mask=mask)
        else:
            x = self.transformer(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        x = self.ln_final(x)
        eot = (tokens.argmax(dim=-1) + m).repeat(b)
        x = x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection.to(x.dtype)
        return x.reshape(b, k, -1)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v linears without bias (the authors' decoder attention)."""

    def __init__(self, dim: int, num_heads: int, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.record_attention = False  # keep the weights (B, heads, N, M) in `last_attention` (figures)
        self.last_attention: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        x, weights = attention(self.q_proj(q), self.k_proj(k), self.v_proj(v), self.num_heads,
                               need_weights=self.record_attention)
        if weights is not None:
            self.last_attention = weights.detach()
        return self.proj_drop(self.proj(x))


class TransformerDecoderLayer(nn.Module):
    """Pre-norm: self-attention, cross-attention to the visual memory, MLP x4 with GELU."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = Attention(d_model, nhead, proj_drop=dropout)
        self.cross_attn = Attention(d_model, nhead, proj_drop=dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_model * 4), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(d_model * 4, d_model))

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        q = self.norm1(x)
        x = x + self.self_attn(q, q, q)
        x = x + self.cross_attn(self.norm2(x), mem, mem)
        return x + self.dropout(self.mlp(self.norm3(x)))


class ContextDecoder(nn.Module):
    """Vision-to-language context decoder: text queries attend to the visual context.

    memory = LN -> Linear -> LN of the visual context (B, N, visual_dim) to `width`;
    queries = LN -> Linear of the text embeddings (B, K, visual_dim); `layers` decoder layers;
    out = LN -> Linear back to `out_dim` (visual_dim by default). Returns (B, K, out_dim).
    """

    def __init__(self, width: int = 256, heads: int = 4, layers: int = 3, visual_dim: int = 1024,
                 dropout: float = 0.1, out_dim: int | None = None):
        super().__init__()
        self.memory_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width),
                                         nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width))
        self.decoder = nn.ModuleList([TransformerDecoderLayer(width, heads, dropout) for _ in range(layers)])
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim or visual_dim))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """text (B, K, C), visual context (B, N, C) -> update (B, K, out_dim)."""
        mem = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.decoder:
            x = layer(x, mem)
        return self.out_proj(x)

    def record_attention(self, enable: bool = True) -> None:
        """Keep each layer's cross-attention weights in `layer.cross_attn.last_attention` (B, h, K, N)."""
        for layer in self.decoder:
            layer.cross_attn.record_attention = enable
            layer.self_attn.record_attention = False


class PreModelPrompter(nn.Module):
    """Pre-model prompting (the paper's ablation): M learnable queries attend to the visual context
    and become the text contexts, so the text encoder runs once per image: (B, N, D) -> (B, M, width)."""

    def __init__(self, num_contexts: int, visual_dim: int, token_width: int, width: int = 256, heads: int = 4,
                 layers: int = 3, dropout: float = 0.1):
        super().__init__()
        self.queries = nn.Parameter(torch.empty(num_contexts, visual_dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.decoder = ContextDecoder(width, heads, layers, visual_dim, dropout, out_dim=token_width)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        q = self.queries.to(visual.dtype).unsqueeze(0).expand(visual.shape[0], -1, -1)
        return self.decoder(q, visual)


class ContextPrompting(nn.Module):
    """The text side of DenseCLIP, one module that the segmentor and the detection backbone receive.

        t  = text_encoder([SOT][ctx_1..ctx_M][class tokens][EOT])    (K, D), cached in eval mode
        t' = t + gamma * context_decoder(t, [z_global; z_dense])      (B, K, D)

    Parameters: `text_encoder` (CLIP's text tower, frozen unless cfg.freeze_text_encoder is False),
    `contexts` (1, M, width), `gamma` (D,), `context_decoder` (or None), `pre_prompter` (or None, the
    pre-model ablation); the class tokens are the non-persistent buffer `texts` (K, budget).
    """

    def __init__(self, clip_model: nn.Module, class_names: Sequence[str], cfg: PromptConfig):
        super().__init__()
        clean_class_names(class_names)  # clear errors for empty lists, blank or duplicate names
        self.text_encoder = ContextTextEncoder(clip_model, cfg.num_contexts, cfg.class_token_budget)
        width, dim = self.text_encoder.width, self.text_encoder.embed_dim
        self.contexts = nn.Parameter(torch.empty(1, cfg.num_contexts, width))
        if cfg.context_init:
            init = phrase_embeddings(self.text_encoder.token_embedding, cfg.context_init)
            if init.shape[0] != cfg.num_contexts:
                raise ValueError(f"context_init {cfg.context_init!r} has {init.shape[0]} tokens but "
                                 f"num_contexts is {cfg.num_contexts}")
            self.contexts.data.copy_(init[None])
        else:
            nn.init.trunc_normal_(self.contexts)  # the authors: trunc_normal_ with its defaults (std 1)
        self.gamma = nn.Parameter(torch.full((dim,), cfg.gamma_init))
        decoder = (cfg.decoder_width, cfg.decoder_heads, cfg.decoder_layers)
        self.context_decoder = None
        if cfg.context_decoder:
            self.context_decoder = ContextDecoder(*decoder, dim, cfg.decoder_dropout)
        self.pre_prompter = PreModelPrompter(cfg.num_contexts, dim, width, *decoder, cfg.decoder_dropout) \
            if cfg.pre_model_prompting else None
        if cfg.freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
        tokens = tokenize_class_names(class_names, cfg.class_token_budget)
        self.register_buffer("texts", tokens, persistent=False)
        self._text_cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def embed_dim(self) -> int:
        return self.text_encoder.embed_dim

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Re-tokenize the class names (same count: heads have one output per class); clears the cache."""
        class_names = clean_class_names(class_names)
        if len(class_names) != self.texts.shape[0]:
            raise ValueError(f"the model has {self.texts.shape[0]} classes; got {len(class_names)} names")
        self.texts = tokenize_class_names(class_names, self.texts.shape[1]).to(self.texts.device)
        self._text_cache = None

    def _text_cache_key(self) -> tuple:
        # Parameter._version grows with every in-place update (optimizer step, load_state_dict, copy_),
        # so new weights invalidate the cache without hooks.
        versions = sum(p._version for p in self.text_encoder.parameters())
        c = self.contexts
        return (self.texts.data_ptr(), self.texts._version, c._version, c.data_ptr(), versions, c.device,
                c.dtype, torch.is_autocast_enabled(c.device.type))

    def text_embeddings(self) -> torch.Tensor:
        """t = text_encoder(class tokens, contexts): (K, D). Cached in eval mode without grad."""
        if self.training or torch.is_grad_enabled():
            return self.text_encoder(self.texts, self.contexts)[0]
        key = self._text_cache_key()
        if self._text_cache is None or self._text_cache[0] != key:
            self._text_cache = (key, self.text_encoder(self.texts, self.contexts)[0])
        return self._text_cache[1]

    def clear_text_cache(self) -> None:
        self._text_cache = None

    def forward(self, global_embedding: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """t' = t + gamma * context_decoder(t, [z_g; z]): (B, K, D) from global (B, D) and dense (B, D, h, w).

        With pre-model prompting the contexts themselves come from the image (text encoder per image)."""
        b, d, h, w = dense.shape
        visual_context = torch.cat([global_embedding.reshape(b, d, 1), dense.reshape(b, d, h * w)],
                                   dim=2).permute(0, 2, 1)  # (B, 1 + h*w, D)
        if self.pre_prompter is not None:
            contexts = self.contexts + self.pre_prompter(visual_context).to(self.contexts.dtype)
            text = self.text_encoder(self.texts, contexts)  # (B, K, D)
        else:
            text = self.text_embeddings().unsqueeze(0).expand(b, -1, -1)
        text = text.to(dense.dtype)
        if self.context_decoder is not None:
            text = text + self.gamma.to(text.dtype) * self.context_decoder(text, visual_context)
        return text

    def onto_stage(self, enc, stage: int, tau: float | None = None) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                              torch.Tensor]:
        """Score maps S = norm(z) . norm(t')^T (/ tau if given) of an EncoderOutput, concatenated onto its
        stage `stage`: (features, that stage now (B, C + K, h, w); S (B, K, h, w); t' (B, K, D))."""
        text = self(enc.global_embedding, enc.dense)
        s = score_maps(enc.dense, text)
        s = s / tau if tau is not None else s
        feats = list(enc.features)
        if s.shape[2:] != feats[stage].shape[2:]:
            raise ValueError(f"score maps {tuple(s.shape[2:])} and stage {stage} features "
                             f"{tuple(feats[stage].shape[2:])} differ in size; pick the stage at the "
                             "embedding stride (score_concat_index)")
        feats[stage] = torch.cat([feats[stage], s.to(feats[stage].dtype)], dim=1)
        return feats, s, text


def prompting_for(clip_model: nn.Module, cfg: ModelConfig, embed_dim: int | None) -> ContextPrompting | None:
    """The text side a config asks for (None for the CLIP baseline), checked against the image encoder's
    embedding dim."""
    if cfg.prompt is None:
        clean_class_names(cfg.class_names)
        return None
    prompting = ContextPrompting(clip_model, cfg.class_names, cfg.prompt)
    if prompting.embed_dim != embed_dim:
        raise ValueError(f"visual embedding dim {embed_dim} != text embedding dim {prompting.embed_dim}: "
                         f"CLIP {cfg.clip_model!r}'s towers do not fit together")
    return prompting
