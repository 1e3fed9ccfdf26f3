"""ZeroShotSegmenter: training-free pixel-text score maps from an open_clip ResNet or ViT.

One loaded CLIP tower serves every method of its kind (method, options and PAMR per call: PredictOptions);
its weights are held once in one dtype (bfloat16 where the device runs it fast); the cosine scores, argmax
and probabilities are fp32. Memory: the encoder sees the image at a working size (`size` = short side,
long side <= `max_long_side`, or sliding windows over it). Labels (H, W) are at the input size, the argmax
of the full-size bilinear maps (a few maps at a time); `scores` / `probs` (K, H, W) too if K*H*W <=
`max_output_elements`, else at the largest size of the same aspect ratio within it (`full_resolution`;
`score_map(k)` upsamples one class). PAMR refines the maps at that output size, as NACLIP at the image's.
"""

from __future__ import annotations

import functools
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

from ..clip import resolve_dtype
from ..data.images import load_image
from ..data.transforms import keep_ratio_size, normalize_image
from ..encoders.clip_resnet import CLIPResNetEncoder
from ..encoders.clip_vit import CLIPViTEncoder
from ..inference import slide as slide_inference
from ..metrics import class_coverage
from ..ops import attention, score_maps
from ..vocab import clean_class_names, get_templates
from .classes import build_queries
from .labels import LabelRule, class_maps, labels_from_maps, upsample
from .methods import METHODS, PredictOptions, resolve_method
from .pamr import pamr
from .proxy import ProxyAttention, create_proxy
from .vit import feature_surgery, vit_dense


@dataclass
class ZeroShotResult:
    """scores (K, h, w) per class (cosine similarities; the max over a class's synonyms; CLIP Surgery's
    corrected scores), probs (K, h, w) softmax(logit_scale * scores) over all queries (so they may sum to
    < 1), labels (H, W) int64 (BACKGROUND = -1 for background), at the input size (H, W) = image_size;
    (h, w) = (H, W) unless `full_resolution` is False."""

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
        """The k classes with the largest pixel coverage (by="coverage") or peak score (by="score")."""
        if by not in ("coverage", "score"):
            raise ValueError(f"by must be 'coverage' or 'score', got {by!r}")
        vals = self.coverage() if by == "coverage" else self.scores.flatten(1).amax(1).numpy()
        order = np.argsort(-vals, kind="stable")[:k]
        return [(self.class_names[i], float(vals[i])) for i in order]

    def score_map(self, cls: int | str) -> torch.Tensor:
        """One class's score map (H, W) at the input size (upsampled on demand if stored smaller)."""
        k = self.class_names.index(cls) if isinstance(cls, str) else cls
        if self.full_resolution:
            return self.scores[k]
        return F.interpolate(self.scores[k][None, None], size=self.image_size, mode="bilinear",
                             align_corners=False)[0, 0]


@functools.lru_cache(maxsize=8)
def _tokenizer(model_name: str, context_length: int):
    """open_clip's tokenizer for the model (explicit / tiny configs: CLIP's BPE), loaded once per process."""
    import open_clip

    if open_clip.get_model_config(model_name) is not None:
        return open_clip.get_tokenizer(model_name)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


class ZeroShotSegmenter(nn.Module):
    """Training-free dense pixel-text scores from an open_clip ResNet or ViT (see the package doc).

    clip_model: an open_clip CLIP (ModifiedResNet or VisionTransformer tower); its text tower is used as
    is, the visual tower through CLIPResNetEncoder / CLIPViTEncoder (parameters shared, registered once).
    pretrained: what the weights are (an open_clip tag, a file, "custom"); None means random weights.
    defaults: PredictOptions fields, the defaults of every `predict` (method="naclip", size=448, ...).
    proxy: ProxyCLIP's vision model (a timm ViT); default: made on first use from proxy_model / proxy_weights
    ("timm": its released weights from DENSECLIP_WEIGHTS_DIR or the Hub; a file; None: random).
    """

    TEXT_BATCH = 256  # prompts per text-encoder call
    CACHE_SIZE = 4096  # text embeddings kept (LRU)

    def __init__(self, clip_model: nn.Module, model_name: str = "custom", *,
                 pretrained: str | None = "custom", proxy: nn.Module | None = None,
                 proxy_model: str = "vit_base_patch8_224.dino",
                 proxy_weights: str | None = "timm", **defaults):
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        visual = clip_model.visual
        self.is_vit = isinstance(visual, VisionTransformer)
        if not self.is_vit and not isinstance(visual, ModifiedResNet):
            raise ValueError("ZeroShotSegmenter needs an open_clip ResNet or ViT tower, got "
                             f"{type(visual).__name__}")
        self.tower = "vit" if self.is_vit else "resnet"
        self.defaults = PredictOptions(**defaults)
        self.defaults.resolved(self.tower)  # a method this tower lacks fails here, not at the first call
        self.clip = clip_model.eval()
        if self.is_vit:
            if not hasattr(visual.transformer.resblocks[-1].attn, "in_proj_weight"):
                raise ValueError("ViTs with custom attention blocks (qk-norm, ...) are not supported; use a "
                                 "CLIP ViT")
            n = len(visual.transformer.resblocks)
            encoder = CLIPViTEncoder(visual, None, out_indices=(n - 1,), official_cls=False, with_necks=False)
        else:
            encoder = CLIPResNetEncoder(visual).to(memory_format=torch.channels_last)  # NHWC convolutions
        # The dense encoder is a view of self.clip.visual with no parameters of its own: kept out of the
        # module tree so the image tower is registered (and saved, moved) once, as part of self.clip.
        object.__setattr__(self, "encoder", encoder.eval())
        self.model_name, self.pretrained = model_name, pretrained
        self.proxy = None if proxy is None else ProxyAttention(proxy)
        self.proxy_model, self.proxy_weights = proxy_model, proxy_weights
        self.tokenizer = _tokenizer(model_name, clip_model.context_length)
        self._cache: OrderedDict = OrderedDict()

    @classmethod
    def from_pretrained(cls, model_name: str, pretrained: str | None = "openai", device=None, *,
                        dtype: str | torch.dtype | None = "auto", quick_gelu: bool | None = None,
                        **defaults) -> ZeroShotSegmenter:
        """Any open_clip ResNet / ViT ("RN50", "RN101", "ViT-B-16", ...) with `pretrained` weights: an
        open_clip tag ("openai"), a local weights file, or None for random weights (a warning; ProxyCLIP's
        proxy is random too). dtype: the weights' dtype, "auto" = what the device runs fast
        (`denseclip.clip.fast_dtype`: bfloat16 on CPUs with AVX512-BF16 / AMX and on recent GPUs), None =
        float32. Offline without cached weights a WeightsUnavailableError says what to do."""
        from ..clip import create_clip

        clip = create_clip(model_name, pretrained, quick_gelu=quick_gelu)
        if pretrained is None:
            defaults.setdefault("proxy_weights", None)
            warnings.warn(f"ZeroShotSegmenter {model_name}: random weights (pretrained=None); the score maps "
                          "are meaningless. Use pretrained='openai' or a local weights file.", stacklevel=2)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        zs = cls(clip, model_name, pretrained=pretrained, **defaults)
        return zs.to(device=device, dtype=resolve_dtype(dtype, device))

    @property
    def method(self) -> str:
        """The default method (what `predict` runs unless told otherwise)."""
        return resolve_method(self.defaults.method, self.tower)

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weights are held in (`zs.to(torch.bfloat16)` changes it)."""
        return self.clip.visual.conv1.weight.dtype

    def options(self, options: PredictOptions | None = None, **changes) -> PredictOptions:
        """The options of one call, resolved for this tower: the defaults, then `options`, then `changes`."""
        opts = options or self.defaults
        return (opts.replace(**changes) if changes else opts).resolved(self.tower)

    def logit_scale(self, opts: PredictOptions) -> float:
        """Probabilities are softmax(logit_scale * scores): the options', else CLIP's own (100 for OpenAI)."""
        return opts.logit_scale or float(self.clip.logit_scale.detach().float().exp())

    def describe(self, options: PredictOptions | None = None) -> str:
        o = self.options(options)
        weights = "RANDOM weights (pretrained=None): scores are meaningless" if self.pretrained is None else \
            f"weights {self.pretrained}"
        how = (f"attention={o.attention}, residual={o.residual}, pos_embed={o.pos_embed}" if self.is_vit
               else f"value_pos_embed={o.value_pos_embed}")
        if o.method == "proxyclip":
            how += f", proxy={self.proxy_model}{'' if self.proxy_weights else ' (random)'}"
        return (f"ZeroShotSegmenter({self.model_name}, {'ViT' if self.is_vit else 'ResNet'}, {weights}, "
                f"{str(self.dtype).removeprefix('torch.')}; method={o.method} ({METHODS[o.method].paper}): "
                f"{how}, pamr_steps={o.pamr_steps}, size={o.size}, templates={o.templates}, "
                f"logit_scale={self.logit_scale(o):g})")

    # ------------------------------------------------------------------------------------------ text
    def encode_text(self, class_names: Sequence[str], templates=None) -> torch.Tensor:
        """(K, D) float32 unit text embeddings: each template's embedding normalised, averaged, renormalised
        (open_clip's zero-shot classifier). Cached per (name, templates, dtype) in an LRU dict: only names
        not in it go through the text encoder. Prompts longer than the context (77 tokens) are truncated
        by the tokenizer (a warning says which)."""
        return self._text(clean_class_names(class_names), templates)

    @torch.no_grad()
    def _text(self, names: Sequence[str], templates=None) -> torch.Tensor:
        from open_clip import build_zero_shot_classifier

        templates = get_templates(templates or self.defaults.templates)
        key = (templates, self.dtype)
        missing = [n for n in dict.fromkeys(names) if (n, key) not in self._cache]
        if missing:
            self._warn_long(missing, templates)
            emb = build_zero_shot_classifier(self.clip, self.tokenizer, missing, templates,
                                             max(1, self.TEXT_BATCH // len(templates)), self.device).T
            for n, e in zip(missing, F.normalize(emb.float(), dim=-1)):
                self._cache[(n, key)] = e
        for n in names:
            self._cache.move_to_end((n, key))
        out = torch.stack([self._cache[(n, key)] for n in names]).to(self.device)
        while len(self._cache) > self.CACHE_SIZE:
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
                          f"{[n[:40] for n in long[:5]]}; shorten these class names", stacklevel=4)

    def clear_text_cache(self) -> None:
        self._cache.clear()

    def load_state_dict(self, *args, **kwargs):  # new weights: cached text embeddings are stale
        self.clear_text_cache()
        return super().load_state_dict(*args, **kwargs)

    # ----------------------------------------------------------------------------------------- image
    def _proxy(self) -> ProxyAttention:
        """ProxyCLIP's proxy, made on first use (a second model: only when the method asks for it)."""
        if self.proxy is None:
            model = create_proxy(self.proxy_model, self.proxy_weights)
            self.proxy = ProxyAttention(model).to(self.device, self.dtype)
        return self.proxy

    def _grid(self, opts: PredictOptions) -> tuple[int, int]:
        """(stride of the maps, multiple the input is padded to) for a method."""
        if not self.is_vit:
            return 32, 32
        patch = self.encoder.patch_size
        if opts.method == "proxyclip":
            return self._proxy().patch, math.lcm(patch, self._proxy().patch)
        return patch, patch

    def dense_embeddings(self, x: torch.Tensor, return_global: bool = False,
                         options: PredictOptions | None = None, **changes):
        """Normalised images (B, 3, H, W) -> dense embeddings (B, D, H/s, W/s) (float32, not unit length),
        and with return_global CLIP's global embedding (B, D) (equals encode_image at the native size).
        The method and its options: `options` / `changes` (PredictOptions fields), else the defaults."""
        opts = self.options(options, **changes)
        x = x.to(self.device, resolve_dtype(self.dtype, self.device))
        if self.is_vit:
            proxy = self._proxy() if opts.method == "proxyclip" else None
            dense, glob = vit_dense(self.encoder, x, opts, proxy, return_global)
        else:
            dense, glob = self._rn_dense(x.contiguous(memory_format=torch.channels_last), opts, return_global)
        return (dense.float(), glob.float()) if return_global else dense.float()

    def _rn_dense(self, x: torch.Tensor, opts: PredictOptions, need_global: bool):
        enc = self.encoder
        c5 = enc.forward_features(x)[-1]
        b, _, h, w = c5.shape
        if opts.method == "attention_pool":
            glob, dense = enc.attention_pool(c5)
            return dense, glob
        pool = enc.visual.attnpool
        tokens = enc.pool_tokens(c5)
        spatial = tokens[:, 1:] if opts.value_pos_embed else c5.flatten(2).transpose(1, 2)
        dense = pool.c_proj(pool.v_proj(spatial)).transpose(1, 2).reshape(b, -1, h, w)
        glob = None
        if need_global:  # CLIP's pool: the mean token is the only query
            q, k, v = pool.q_proj(tokens[:, :1]), pool.k_proj(tokens), pool.v_proj(tokens)
            glob = pool.c_proj(attention(q, k, v, pool.num_heads)[0])[:, 0]
        return dense, glob

    def _padded_dense(self, x: torch.Tensor, opts: PredictOptions, need_global: bool = False):
        """Normalised images (B, 3, h, w) padded to the method's multiple (zeros: the mean colour, once
        normalised) -> dense embeddings (, global), and the extent (h/s, w/s) of the cells covering them."""
        stride, pad_to = self._grid(opts)
        h, w = x.shape[2:]
        out = self.dense_embeddings(F.pad(x, (0, -w % pad_to, 0, -h % pad_to)), need_global, opts)
        return out, (h / stride, w / stride)

    def image_embeddings(self, x: torch.Tensor, options: PredictOptions | None = None,
                         **changes) -> torch.Tensor:
        """The working image (1, 3, h, w) -> the dense embeddings of the feature cells that cover it
        (D, ceil(h/s), ceil(w/s)), float32, for the method of `options` / `changes`."""
        dense, (eh, ew) = self._padded_dense(x, self.options(options, **changes))
        return dense[0, :, :math.ceil(eh), :math.ceil(ew)]

    def _score_maps(self, x: torch.Tensor, text: torch.Tensor, opts: PredictOptions,
                    redundant: torch.Tensor | None = None):
        """Normalised images (B, 3, h, w) -> score maps (B, Q, h', w') of the input padded to the method's
        multiple, and the extent (h/s, w/s) of the feature cells that cover the unpadded input."""
        if opts.method != "clip_surgery":
            dense, extent = self._padded_dense(x, opts)
            return score_maps(dense, text), extent
        (dense, glob), extent = self._padded_dense(x, opts, need_global=True)
        cls_scores = F.normalize(glob, dim=-1) @ text.T  # the class token: the authors' image_features[:, :1]
        empty = None if redundant is None else score_maps(dense, redundant)
        return feature_surgery(score_maps(dense, text), cls_scores, empty), extent

    def working_image(self, rgb: np.ndarray, size: int, max_long_side: int | None = None,
                      antialias: bool = True) -> torch.Tensor:
        """(H, W, 3) uint8 -> the normalised working image (1, 3, h, w) float32: short side `size`, long side
        at most `max_long_side` (default 4 * size); uint8 resize, never a float copy of a huge input."""
        hw = keep_ratio_size(*rgb.shape[:2], size, max_long_side or 4 * size)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
        if hw != tuple(rgb.shape[:2]):
            x = F.interpolate(x, size=hw, mode="bilinear", antialias=antialias, align_corners=False)
        return normalize_image(x.float()).to(self.device)

    @torch.no_grad()
    def image_maps(self, x: torch.Tensor, text: torch.Tensor, opts: PredictOptions,
                   redundant: torch.Tensor | None = None):
        """The working image (1, 3, h, w) -> score maps (Q, h', w') and their extent: whole-image maps at the
        feature grid, or (opts.slide = crop or (crop, stride)) windows averaged at the working size."""
        if opts.slide is None:
            maps, extent = self._score_maps(x, text, opts, redundant)
            return maps[0], extent
        slide = opts.slide
        crop, stride = (slide, max(1, 2 * slide // 3)) if isinstance(slide, int) else slide

        def windows(w: torch.Tensor) -> torch.Tensor:
            maps, extent = self._score_maps(w, text, opts, redundant)
            return upsample(maps, w.shape[2:], extent)

        return slide_inference(windows, x, crop, stride, opts.window_batch)[0], tuple(x.shape[2:])

    @staticmethod
    def refine(x: torch.Tensor, maps: torch.Tensor, extent, out_hw: tuple[int, int],
               opts: PredictOptions) -> torch.Tensor:
        """PAMR as NACLIP applies it: the maps (Q, h', w') upsampled to `out_hw`, refined along the edges of
        the working image x resized (bilinear) to that size -> (Q, *out_hw)."""
        image = F.interpolate(x.float(), size=out_hw, mode="bilinear", align_corners=False)
        return pamr(image, upsample(maps, out_hw, extent)[None], opts.pamr_steps, opts.pamr_dilations)[0]

    # --------------------------------------------------------------------------------------- predict
    @torch.no_grad()
    def predict(self, image, class_names, options: PredictOptions | None = None, **changes) -> ZeroShotResult:
        """Segment one image into `class_names` without training.

        image: path / PIL / numpy / tensor, any mode (see load_image).
        class_names: names, or per class a list of synonyms (the first is its name), or a mapping name ->
            synonyms; blank names raise, duplicates raise unless dedupe=True (keeping the first).
        options / changes (PredictOptions, over the segmenter's defaults): method and its options,
            pamr_steps; templates; background: a float threshold, or pseudo-class name(s) whose pixels get
            label BACKGROUND (-1); threshold with background_on="score" | "prob"; area_threshold (SCLIP's);
            size, max_long_side (working size); slide (crop or (crop, stride) windows over the working
            image, averaged like mmseg's slide inference); max_side (decode smaller); max_output_elements.
        """
        opts = self.options(options, **changes)
        t0 = time.perf_counter()
        cq = build_queries(class_names, opts.background, opts.dedupe)
        rgb = load_image(image, opts.max_side)
        H, W = rgb.shape[:2]
        t1 = time.perf_counter()
        text = self._text(cq.texts, opts.templates)[list(cq.text_index)]
        surgery_one = opts.method == "clip_surgery" and text.shape[0] == 1
        redundant = self._text([""], opts.templates) if surgery_one else None  # the authors' empty prompt
        t2 = time.perf_counter()
        x = self.working_image(rgb, opts.size, opts.max_long_side, opts.antialias)
        maps, extent = self.image_maps(x, text, opts, redundant)
        k, query_class = cq.num_classes, cq.class_tensor()
        shape = (H, W)
        if k * H * W > opts.max_output_elements:
            f = math.sqrt(opts.max_output_elements / (k * H * W))
            shape = (max(1, int(H * f)), max(1, int(W * f)))
        if opts.pamr_steps:
            maps, extent = self.refine(x, maps, extent, shape, opts), shape
        t3 = time.perf_counter()
        scale = self.logit_scale(opts)
        rule = LabelRule(k, query_class, opts.threshold, opts.background_on, scale, opts.area_threshold)
        labels = labels_from_maps(maps, extent, (H, W), rule).cpu()
        scores, probs = class_maps(upsample(maps, shape, extent), query_class, k, scale)
        t4 = time.perf_counter()
        timing = {"load": t1 - t0, "text": t2 - t1, "image": t3 - t2, "render": t4 - t3, "total": t4 - t0}
        return ZeroShotResult(scores=scores.cpu(), probs=probs.cpu(), labels=labels, class_names=cq.names,
                              image_size=(H, W), seconds=t4 - t0, timing=timing, info=self._info(cq, opts, x))

    def _info(self, cq, opts: PredictOptions, x: torch.Tensor) -> dict:
        info = {"model": self.model_name, "pretrained": self.pretrained, "method": opts.method,
                "working_size": tuple(x.shape[2:]), "slide": opts.slide, "background": opts.background,
                "background_names": cq.background, "threshold": opts.threshold, "queries": len(cq.text_index),
                "logit_scale": self.logit_scale(opts), "pamr_steps": opts.pamr_steps,
                "templates": len(get_templates(opts.templates)),
                "dtype": str(self.dtype).removeprefix("torch.")}
        if self.is_vit:
            info.update(attention=opts.attention, residual=opts.residual, pos_embed=opts.pos_embed)
        return info
