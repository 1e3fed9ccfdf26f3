"""Training-free pixel-text score maps for any class names (zero-shot segmentation with a CLIP model).

    zs = ZeroShotSegmenter.from_pretrained("RN50", pretrained="openai")
    r = zs.predict("photo.jpg", ["sky", "tree", "person"])   # r.scores (K,H,W), r.probs, r.labels (H,W)

Dense features (`dense_mode`); CLIP's own pooling mixes every position with every other, so
each needs a training-free change of the *last* attention to localise:

ResNets
  "value" (alias "maskclip", default): each C5 position through the attention pool's value path only,
      v_proj then c_proj, with no query-key mixing (MaskCLIP, Zhou et al., ECCV 2022). Like MaskCLIP, the
      positional embedding is not added unless `value_pos_embed=True`.
  "attention_pool": the full attention pool with every position as a query (DenseCLIP, Rao et al.,
      CVPR 2022). Each position attends to the whole image, so its maps barely localise; kept for tutorials.
ViTs (the last block's attention is replaced; blocks before it are CLIP's)
  "vv" (default): value-value self-attention softmax(v v^T / sqrt(d)) v (CLIP Surgery, Li et al. 2023; GEM).
  "csa" (alias "qq+kk"): SCLIP's correlative self-attention (softmax(q q^T) + softmax(k k^T)) v (Wang et al. 2024).
  "qq": query-query attention softmax(q q^T) v (ClearCLIP, Lan et al., ECCV 2024).
  "value" (alias "maskclip"): identity attention, out_proj(v) per token (MaskCLIP's ViT variant).
  "vanilla": CLIP's own q-k attention (a poor localiser; the baseline the others fix).
  `clearclip=True` drops the last block's residual connection and FFN (ClearCLIP). Default: True for
  "vv", "csa" and "qq"; False for "value" (MaskCLIP keeps them) and "vanilla".
Then ln_post and proj on every patch token give (B, D, h, w) in CLIP's joint space.

Memory: the image is resized (uint8, antialiased) to a working size (`size` = short side, long side
<= `max_long_side`), or cut into sliding windows over that working image: the encoder never sees more.
Score maps stay at the feature grid (whole image) or the working size (slide: K x working size float32);
labels (H, W) are always at the input size and equal the argmax of the full-size bilinear maps (rendered
a few classes at a time); `scores`/`probs` (K, H, W) float32 are at the input size if K*H*W <=
`max_output_elements`, otherwise at the largest size of the same aspect ratio within it
(`result.full_resolution`; `result.score_map(k)` upsamples one class on demand).
`max_side` decodes path inputs smaller (outputs then match the decoded size).
"""

from __future__ import annotations

import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.transforms import keep_ratio_size, load_image, normalize_image
from .encoders.clip_resnet import CLIPResNetEncoder
from .encoders.clip_vit import CLIPViTEncoder
from .inference import slide as slide_inference
from .metrics import class_coverage
from .ops import attention, score_maps
from .render import BACKGROUND, render_labels, upsample
from .vocab import clean_class_names, get_templates

__all__ = ["BACKGROUND", "ZeroShotResult", "ZeroShotSegmenter", "training_free_block"]

_RN_MODES = {"value": "value", "maskclip": "value", "attention_pool": "attention_pool"}
_VIT_MODES = {"vv": "vv", "csa": "csa", "qq+kk": "csa", "qq": "qq", "value": "value", "maskclip": "value",
              "vanilla": "vanilla"}


@dataclass
class ZeroShotResult:
    """scores (K, h, w) cosine similarities, probs (K, h, w) softmax(logit_scale * scores) over the classes
    (and background pseudo-classes, so they may sum to < 1), labels (H, W) int64 (BACKGROUND = -1 for
    background), at the input size (H, W) = image_size; (h, w) = (H, W) unless `full_resolution` is False."""

    scores: torch.Tensor
    probs: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    seconds: float = 0.0
    timing: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def full_resolution(self) -> bool:
        return tuple(self.scores.shape[1:]) == tuple(self.image_size)

    def coverage(self) -> np.ndarray:
        """Fraction of pixels labelled with each class (K,); background pixels count for none."""
        return class_coverage(self.labels, len(self.class_names))

    def top_classes(self, k: int = 5, by: str = "coverage") -> list[tuple[str, float]]:
        """The k classes with the largest pixel coverage (by="coverage") or peak cosine score (by="score")."""
        if by not in ("coverage", "score"):
            raise ValueError(f"by must be 'coverage' or 'score', got {by!r}")
        vals = self.coverage() if by == "coverage" else self.scores.flatten(1).amax(1).numpy()
        order = np.argsort(-vals, kind="stable")[:k]
        return [(self.class_names[i], float(vals[i])) for i in order]

    def score_map(self, cls: int | str) -> torch.Tensor:
        """One class's cosine map (H, W) at the input size (upsampled on demand if stored smaller)."""
        k = self.class_names.index(cls) if isinstance(cls, str) else cls
        m = self.scores[k]
        if self.full_resolution:
            return m
        return F.interpolate(m[None, None], size=self.image_size, mode="bilinear", align_corners=False)[0, 0]


def training_free_block(blk: nn.Module, x: torch.Tensor, mode: str = "vv", clearclip: bool = True) -> torch.Tensor:
    """The last ViT block (open_clip ResidualAttentionBlock) with its attention replaced (see module doc).

    x: block input tokens (B, N, C), batch first. Returns (B, N, C): ls_1(attention) alone if clearclip,
    else CLIP's residual and FFN around it.
    """
    mode = _VIT_MODES[mode]
    attn = blk.attn
    y = blk.ln_1(x)
    c = y.shape[-1]
    if mode == "value":
        out = F.linear(y, attn.in_proj_weight[2 * c:], attn.in_proj_bias[2 * c:])
    else:
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        heads = attn.num_heads
        if mode == "vanilla":
            out = attention(q, k, v, heads)[0]
        elif mode == "vv":
            out = attention(v, v, v, heads)[0]
        elif mode == "qq":
            out = attention(q, q, v, heads)[0]
        else:  # csa: two separate softmaxes, summed
            out = attention(q, q, v, heads)[0] + attention(k, k, v, heads)[0]
    out = blk.ls_1(attn.out_proj(out))
    if clearclip:
        return out
    out = x + out
    return out + blk.ls_2(blk.mlp(blk.ln_2(out)))


class ZeroShotSegmenter(nn.Module):
    """Training-free dense pixel-text scores from an open_clip ResNet or ViT (see the module doc).

    clip_model: an open_clip CLIP (ModifiedResNet or VisionTransformer tower). The text tower is used
    as is; the visual tower is wrapped by CLIPResNetEncoder / CLIPViTEncoder (parameters shared).
    templates: default prompt set ("single", "simple", "imagenet" or a list; averaged per class).
    size / max_long_side: working size, short side / bound on the long side (default 4 * size).
    autocast_dtype: e.g. torch.bfloat16 (2x faster on CPUs with avx512_bf16); fp16 on CPU is refused.
    channels_last: NHWC convolutions (default: True for ResNets; faster on CPU and GPU).
    """

    def __init__(self, clip_model: nn.Module, model_name: str = "custom", *, dense_mode: str | None = None,
                 clearclip: bool | None = None, value_pos_embed: bool = False, templates="simple",
                 size: int = 448, max_long_side: int | None = None, autocast_dtype: torch.dtype | None = None,
                 channels_last: bool | None = None, is_random: bool = False, pretrained: str | None = None,
                 text_batch: int = 256, cache_size: int = 4096):
        super().__init__()
        import open_clip
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        visual = clip_model.visual
        self.is_vit = isinstance(visual, VisionTransformer)
        if not self.is_vit and not isinstance(visual, ModifiedResNet):
            raise ValueError(f"ZeroShotSegmenter needs an open_clip ResNet or ViT tower, got {type(visual).__name__}")
        modes = _VIT_MODES if self.is_vit else _RN_MODES
        dense_mode = dense_mode or ("vv" if self.is_vit else "value")
        if dense_mode not in modes:
            kind = "ViT" if self.is_vit else "ResNet"
            raise ValueError(f"dense_mode {dense_mode!r} is not available for a {kind}; choose from {sorted(modes)}")
        self.dense_mode = modes[dense_mode]
        if clearclip and not self.is_vit:
            raise ValueError("clearclip applies to ViTs only (it drops the last block's residual and FFN)")
        self.clearclip = bool(clearclip if clearclip is not None else self.dense_mode in ("vv", "csa", "qq"))
        self.clip = clip_model.eval()
        if self.is_vit:
            n = len(visual.transformer.resblocks)
            if not hasattr(visual.transformer.resblocks[-1].attn, "in_proj_weight"):
                raise ValueError("ViTs with custom attention blocks (qk-norm, ...) are not supported; use a CLIP ViT")
            encoder = CLIPViTEncoder(visual, None, out_indices=(n - 1,), official_cls=False, with_necks=False)
            self.stride = encoder.patch_size
        else:
            encoder, self.stride = CLIPResNetEncoder(visual), 32
        # The dense encoder is a view of self.clip.visual with no parameters of its own: kept out of the
        # module tree so the image tower is registered (and saved, moved) once, as part of self.clip.
        object.__setattr__(self, "encoder", encoder.eval())
        self.channels_last = (not self.is_vit) if channels_last is None else channels_last
        if self.channels_last:
            self.encoder.to(memory_format=torch.channels_last)
        self.model_name, self.pretrained, self.is_random = model_name, pretrained, is_random
        self.value_pos_embed, self.size, self.max_long_side = value_pos_embed, size, max_long_side
        self.templates = get_templates(templates)
        self.autocast_dtype, self.text_batch = autocast_dtype, text_batch
        if open_clip.get_model_config(model_name) is not None:
            self.tokenizer = open_clip.get_tokenizer(model_name)
        else:  # explicit / tiny configs: CLIP's BPE tokenizer
            self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=clip_model.context_length)
        self._cache: OrderedDict = OrderedDict()
        self.cache_size = cache_size

    @classmethod
    def from_pretrained(cls, model_name: str, pretrained: str | None = "openai", device=None, *,
                        quick_gelu: bool | None = None, **kwargs) -> ZeroShotSegmenter:
        """Any open_clip ResNet / ViT ("RN50", "RN101", "RN50x4", "ViT-B-16", "ViT-L-14", ...).

        pretrained: an open_clip tag ("openai"), a local weights file, or None for random weights (a warning;
        `is_random` is True). quick_gelu: default from the tag's pretrained config (openai: True), True for
        files and None. Offline without cached weights a WeightsUnavailableError says what to do.
        """
        import open_clip

        from .clip import create_clip

        if quick_gelu is None:
            cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
            quick_gelu = bool(cfg.get("quick_gelu", False)) if cfg else True
        clip = create_clip(model_name, pretrained, quick_gelu=quick_gelu)
        if pretrained is None:
            warnings.warn(f"ZeroShotSegmenter {model_name}: random weights (pretrained=None); the score maps are "
                          "meaningless. Use pretrained='openai' or a local weights file.", stacklevel=2)
        zs = cls(clip, model_name, is_random=pretrained is None, pretrained=pretrained, **kwargs)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return zs.to(device)

    def describe(self) -> str:
        weights = "RANDOM weights (pretrained=None): scores are meaningless" if self.is_random else \
            f"weights {self.pretrained or 'given by the caller'}"
        extra = f", clearclip={self.clearclip}" if self.is_vit else f", value_pos_embed={self.value_pos_embed}"
        return (f"ZeroShotSegmenter({self.model_name}, {'ViT' if self.is_vit else 'ResNet'}, {weights}; "
                f"dense_mode={self.dense_mode}{extra}, size={self.size}, {len(self.templates)} templates, "
                f"autocast={self.autocast_dtype}, channels_last={self.channels_last})")

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def _autocast(self):
        dt, dev = self.autocast_dtype, self.device.type
        if dt == torch.float16 and dev == "cpu":
            raise ValueError("float16 autocast on CPU is extremely slow here; use torch.bfloat16 or None")
        return torch.autocast(dev, dtype=dt, enabled=dt is not None)

    # ------------------------------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, class_names: Sequence[str], templates=None) -> torch.Tensor:
        """(K, D) unit text embeddings: each template embedding normalised, averaged, renormalised.

        Cached per (name, templates) in an LRU dict; only names not in it go through the text encoder.
        Prompts longer than the context (77 tokens) are truncated by the tokenizer (a warning says which).
        """
        names = clean_class_names(class_names)
        templates = get_templates(templates) if templates is not None else self.templates
        key = (templates, str(self.autocast_dtype))
        missing = [n for n in names if (n, key) not in self._cache]
        if missing:
            self._warn_long(missing, templates)
            prompts = [t.format(n) for n in missing for t in templates]
            embs = []
            for i in range(0, len(prompts), self.text_batch):
                tokens = self.tokenizer(prompts[i:i + self.text_batch]).to(self.device)
                with self._autocast():
                    embs.append(F.normalize(self.clip.encode_text(tokens).float(), dim=-1))
            emb = F.normalize(torch.cat(embs).reshape(len(missing), len(templates), -1).mean(1), dim=-1)
            for n, e in zip(missing, emb):
                self._cache[(n, key)] = e
        for n in names:
            self._cache.move_to_end((n, key))
        out = torch.stack([self._cache[(n, key)] for n in names]).to(self.device)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def _warn_long(self, names: Sequence[str], templates: Sequence[str]) -> None:
        encode, ctx = getattr(self.tokenizer, "encode", None), getattr(self.tokenizer, "context_length", 77)
        if encode is None:
            return
        longest = max(templates, key=len)
        long = [n for n in names if len(encode(longest.format(n))) + 2 > ctx]
        if long:
            warnings.warn(f"{len(long)} prompt(s) exceed the text encoder's {ctx} tokens and are truncated: "
                          f"{[n[:40] for n in long[:5]]}; shorten these class names", stacklevel=3)

    def clear_text_cache(self) -> None:
        self._cache.clear()

    def load_state_dict(self, *args, **kwargs):  # new weights: cached text embeddings are stale
        self.clear_text_cache()
        return super().load_state_dict(*args, **kwargs)

    # ----------------------------------------------------------------------------------------- image
    def dense_embeddings(self, x: torch.Tensor, return_global: bool = False):
        """Normalised images (B, 3, H, W) -> dense embeddings (B, D, H/s, W/s) (float32, not unit length),
        and with return_global CLIP's global embedding (B, D) (equals encode_image at the native size)."""
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            dense, glob = self._vit_dense(x, return_global) if self.is_vit else self._rn_dense(x, return_global)
        dense = dense.float()
        return (dense, glob.float()) if return_global else dense

    def _rn_dense(self, x: torch.Tensor, need_global: bool):
        enc = self.encoder
        c5 = enc.forward_features(x)[-1]
        b, _, h, w = c5.shape
        if self.dense_mode == "attention_pool":
            glob, dense = enc.attention_pool(c5)
            return dense, glob
        pool = enc.visual.attnpool
        tokens = enc.pool_tokens(c5)
        spatial = tokens[:, 1:] if self.value_pos_embed else c5.flatten(2).transpose(1, 2)
        dense = pool.c_proj(pool.v_proj(spatial)).transpose(1, 2).reshape(b, -1, h, w)
        glob = None
        if need_global:  # CLIP's pool: the mean token is the only query
            out = attention(pool.q_proj(tokens[:, :1]), pool.k_proj(tokens), pool.v_proj(tokens), pool.num_heads)[0]
            glob = pool.c_proj(out)[:, 0]
        return dense, glob

    def _vit_dense(self, x: torch.Tensor, need_global: bool):
        enc = self.encoder
        tokens, (h, w) = enc.embed(x)
        blocks = enc.visual.transformer.resblocks
        for i in range(len(blocks) - 1):
            tokens = enc.run_block(i, tokens)
        blk = blocks[-1]
        out = training_free_block(blk, tokens, self.dense_mode, self.clearclip)
        dense = enc.project(out[:, 1:]).transpose(1, 2).reshape(x.shape[0], -1, h, w)
        glob = None
        if need_global:  # CLIP's last block for the class token alone
            y, attn = blk.ln_1(tokens), blk.attn
            q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            cls = tokens[:, :1] + blk.ls_1(attn.out_proj(attention(q[:, :1], k, v, attn.num_heads)[0]))
            glob = enc.project(cls + blk.ls_2(blk.mlp(blk.ln_2(cls))))[:, 0]
        return dense, glob

    def _score_maps(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float]]:
        """Normalised images (B, 3, h, w) -> cosine maps (B, K, h', w') of the input padded to the stride,
        and the extent (h/s, w/s) of feature cells that cover the unpadded input."""
        h, w = x.shape[2:]
        s = self.stride
        x = F.pad(x, (0, -w % s, 0, -h % s))  # zeros = the mean colour after normalisation
        return score_maps(self.dense_embeddings(x), text), (h / s, w / s)

    # --------------------------------------------------------------------------------------- predict
    @torch.no_grad()
    def predict(self, image, class_names: Sequence[str], *, templates=None, background=None,
                background_on: str = "score", size: int | None = None, max_long_side: int | None = None,
                slide: int | tuple[int, int] | None = None, window_batch: int = 4, max_side: int | None = None,
                dedupe: bool = False, max_output_elements: int = 1 << 26) -> ZeroShotResult:
        """Segment one image into `class_names` without training.

        image: path / PIL / numpy / tensor, any mode (see load_image); max_side decodes it smaller.
        class_names: 1 to hundreds of names; blank names raise, duplicates raise unless dedupe=True (merged,
            keeping the first; result.class_names lists the kept ones).
        templates: prompt set for this call (default: the segmenter's).
        background: None (every pixel gets a class); a float threshold: pixels whose best cosine score
            (background_on="score") or best probability ("prob") is below it get label BACKGROUND (-1);
            or pseudo-class name(s) ("background" or a list such as ["wall", "ground"]) encoded as extra
            text classes: pixels won by one of them get label -1 (their scores are not returned).
        size, max_long_side: working size (short side, bound on the long side); default the segmenter's.
        slide: crop or (crop, stride) windows over the working image (stride default 2/3 crop), for
            large working sizes; windows are averaged like mmseg's slide inference.
        max_output_elements: bound on K*H*W of the returned scores / probs (see module doc).
        """
        t0 = time.perf_counter()
        names = clean_class_names(class_names, dedupe=dedupe)
        bg_names, threshold = (), None
        if isinstance(background, (int, float)) and not isinstance(background, bool):
            if background_on not in ("score", "prob"):
                raise ValueError(f"background_on must be 'score' or 'prob', got {background_on!r}")
            threshold = float(background)
        elif background is not None:
            bg_names = clean_class_names([background] if isinstance(background, str) else background)
            clash = {n.casefold() for n in names} & {n.casefold() for n in bg_names}
            if clash:
                raise ValueError(f"background pseudo-class(es) {sorted(clash)} are also class names; remove one")
        rgb = load_image(image, max_side)
        H, W = rgb.shape[:2]
        t1 = time.perf_counter()
        text = self.encode_text(names + bg_names, templates)
        t2 = time.perf_counter()
        size = size or self.size
        hw = keep_ratio_size(H, W, size, max_long_side or self.max_long_side or 4 * size)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        if hw != (H, W):  # uint8 antialiased resize: never a float copy of a huge input
            x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
        x = normalize_image(x.float())
        if slide is None:
            maps, extent = self._score_maps(x, text)
            maps = maps[0]
        else:
            crop, stride = (slide, max(1, 2 * slide // 3)) if isinstance(slide, int) else slide
            maps, extent = slide_inference(self._window_maps(text), x, crop, stride, window_batch)[0], hw
        t3 = time.perf_counter()
        logit_scale = float(self.clip.logit_scale.exp())
        labels = render_labels(maps, len(names), extent, (H, W), threshold, background_on, logit_scale).cpu()
        shape = (H, W)
        if len(names) * H * W > max_output_elements:
            f = math.sqrt(max_output_elements / (len(names) * H * W))
            shape = (max(1, int(H * f)), max(1, int(W * f)))
        full = upsample(maps, shape, extent)
        scores, probs = full[:len(names)].cpu(), (logit_scale * full).softmax(0)[:len(names)].cpu()
        t4 = time.perf_counter()
        timing = {"load": t1 - t0, "text": t2 - t1, "image": t3 - t2, "render": t4 - t3, "total": t4 - t0}
        info = {"model": self.model_name, "is_random": self.is_random, "dense_mode": self.dense_mode,
                "working_size": hw, "slide": slide, "background": background, "background_names": bg_names,
                "templates": len(get_templates(templates)) if templates is not None else len(self.templates)}
        if self.is_vit:
            info["clearclip"] = self.clearclip
        return ZeroShotResult(scores=scores, probs=probs, labels=labels, class_names=names, image_size=(H, W),
                              seconds=t4 - t0, timing=timing, info=info)

    def _window_maps(self, text: torch.Tensor):
        """fn(windows (N, 3, h, w)) -> cosine maps (N, K, h, w) at the windows' size, for `slide`."""
        def fn(windows: torch.Tensor) -> torch.Tensor:
            maps, extent = self._score_maps(windows, text)
            return upsample(maps, windows.shape[2:], extent)

        return fn
