"""ZeroShotSegmenter: training-free pixel-text score maps from an open_clip ResNet or ViT.

Memory: the image is resized (uint8) to a working size (`size` = short side, long side <= `max_long_side`),
or cut into sliding windows over that working image: the encoder never sees more. Score maps stay at the
feature grid (whole image) or the working size (slide, PAMR: Q x working size float32); labels (H, W) are
always at the input size and equal the argmax of the full-size bilinear maps (rendered a few maps at a
time); `scores` / `probs` (K, H, W) float32 are at the input size if K*H*W <= `max_output_elements`,
otherwise at the largest size of the same aspect ratio within it (`result.full_resolution`;
`result.score_map(k)` upsamples one class on demand). `max_side` decodes path inputs smaller.
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

from ..data.transforms import keep_ratio_size, load_image, normalize_image
from ..encoders.clip_resnet import CLIPResNetEncoder
from ..encoders.clip_vit import CLIPViTEncoder
from ..inference import slide as slide_inference
from ..metrics import class_coverage
from ..ops import attention, score_maps
from ..render import LabelRule, class_maps, render_with_area, upsample
from ..vocab import clean_class_names, get_templates
from .classes import build_queries
from .methods import DENSE_MODE, METHODS, PredictOptions, ZeroShotConfig, resolve_method
from .pamr import pamr
from .proxy import ProxyAttention, create_proxy
from .vit import ViTPlan, feature_surgery, vit_dense


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
        m = self.scores[k]
        if self.full_resolution:
            return m
        return F.interpolate(m[None, None], size=self.image_size, mode="bilinear", align_corners=False)[0, 0]


def _options(cfg: ZeroShotConfig | None, options: dict, tower: str) -> ZeroShotConfig:
    """The config with keyword options applied; the old names dense_mode= and clearclip= still work."""
    options = dict(options)
    if "dense_mode" in options:
        options["method"] = options.pop("dense_mode")
    if "clearclip" in options:
        clear = options.pop("clearclip")
        if clear is not None and tower == "resnet":
            raise ValueError("clearclip / residual apply to ViTs only (the last block's residual and FFN)")
        options["residual"] = None if clear is None else not clear
    cfg = cfg or ZeroShotConfig()
    return cfg.replace(**options) if options else cfg


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
    cfg / **options: a ZeroShotConfig or its fields as keywords (method="naclip", pamr_steps=10, size=448,
    templates="imagenet", logit_scale=40, autocast_dtype=torch.bfloat16, ...).
    proxy: ProxyCLIP's vision model (a timm ViT); default: built from cfg.proxy_model / proxy_weights.
    """

    def __init__(self, clip_model: nn.Module, model_name: str = "custom", cfg: ZeroShotConfig | None = None,
                 *, proxy: nn.Module | None = None, is_random: bool = False, pretrained: str | None = None,
                 **options):
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        visual = clip_model.visual
        self.is_vit = isinstance(visual, VisionTransformer)
        if not self.is_vit and not isinstance(visual, ModifiedResNet):
            raise ValueError("ZeroShotSegmenter needs an open_clip ResNet or ViT tower, got "
                             f"{type(visual).__name__}")
        tower = "vit" if self.is_vit else "resnet"
        self.cfg = cfg = _options(cfg, options, tower)
        self.method = resolve_method(cfg.method, tower)
        self.dense_mode = DENSE_MODE.get(self.method, self.method)  # the old name (the web app asks it)
        self.plan = self._plan(cfg, tower)
        self.clip = clip_model.eval()
        self.proxy = None
        if self.is_vit:
            if not hasattr(visual.transformer.resblocks[-1].attn, "in_proj_weight"):
                raise ValueError("ViTs with custom attention blocks (qk-norm, ...) are not supported; use a "
                                 "CLIP ViT")
            n = len(visual.transformer.resblocks)
            encoder = CLIPViTEncoder(visual, None, out_indices=(n - 1,), official_cls=False, with_necks=False)
            self.stride = self.pad_to = encoder.patch_size
            if self.plan.attention == "proxy":
                model = proxy if proxy is not None else create_proxy(cfg.proxy_model, cfg.proxy_weights)
                self.proxy = ProxyAttention(model, cfg.proxy_beta, cfg.proxy_gamma)
                self.stride, self.pad_to = self.proxy.patch, math.lcm(self.pad_to, self.proxy.patch)
        else:
            encoder, self.stride, self.pad_to = CLIPResNetEncoder(visual), 32, 32
        # The dense encoder is a view of self.clip.visual with no parameters of its own: kept out of the
        # module tree so the image tower is registered (and saved, moved) once, as part of self.clip.
        object.__setattr__(self, "encoder", encoder.eval())
        self.channels_last = (not self.is_vit) if cfg.channels_last is None else cfg.channels_last
        if self.channels_last:
            self.encoder.to(memory_format=torch.channels_last)
        self.model_name, self.pretrained, self.is_random = model_name, pretrained, is_random
        self.templates, self.autocast_dtype = get_templates(cfg.templates), cfg.dtype
        self.tokenizer = _tokenizer(model_name, clip_model.context_length)
        self._cache: OrderedDict = OrderedDict()

    @staticmethod
    def _plan(cfg: ZeroShotConfig, tower: str) -> ViTPlan:
        m = METHODS[resolve_method(cfg.method, tower)]
        if tower == "resnet" and (cfg.attention or cfg.residual is not None or cfg.pos_embed):
            raise ValueError("attention, residual and pos_embed apply to ViTs only; ResNets have "
                             "method='maskclip' (value_pos_embed=True/False) or 'attention_pool'")
        residual = m.residual if cfg.residual is None else cfg.residual
        return ViTPlan(attention=cfg.attention or m.attention, residual=residual,
                       pos_embed=cfg.pos_embed or m.pos_embed, gaussian_std=cfg.gaussian_std,
                       surgery_blocks=cfg.surgery_blocks)

    @classmethod
    def from_pretrained(cls, model_name: str, pretrained: str | None = "openai", device=None, *,
                        quick_gelu: bool | None = None, **options) -> ZeroShotSegmenter:
        """Any open_clip ResNet / ViT ("RN50", "RN101", "ViT-B-16", ...); options as for the constructor.

        pretrained: an open_clip tag ("openai"), a local weights file, or None for random weights (a warning;
        `is_random`; ProxyCLIP's proxy is random too). quick_gelu: default from the tag's pretrained config
        (openai: True), True for files and None. Offline without cached weights a WeightsUnavailableError
        says what to do.
        """
        import open_clip

        from ..clip import create_clip

        if quick_gelu is None:
            cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
            quick_gelu = bool(cfg.get("quick_gelu", False)) if cfg else True
        clip = create_clip(model_name, pretrained, quick_gelu=quick_gelu)
        if pretrained is None:
            options.setdefault("proxy_weights", None)
            warnings.warn(f"ZeroShotSegmenter {model_name}: random weights (pretrained=None); the score maps "
                          "are meaningless. Use pretrained='openai' or a local weights file.", stacklevel=2)
        zs = cls(clip, model_name, is_random=pretrained is None, pretrained=pretrained, **options)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return zs.to(device)

    def describe(self) -> str:
        weights = "RANDOM weights (pretrained=None): scores are meaningless" if self.is_random else \
            f"weights {self.pretrained or 'given by the caller'}"
        p, cfg = self.plan, self.cfg
        how = (f"attention={p.attention}, residual={p.residual}, pos_embed={p.pos_embed}" if self.is_vit
               else f"value_pos_embed={cfg.value_pos_embed}")
        proxy = cfg.proxy_model if cfg.proxy_weights or self.proxy is None else f"{cfg.proxy_model} (random)"
        extra = f", proxy={proxy}" if self.proxy is not None else ""
        extra += f", pamr_steps={cfg.pamr_steps}" if cfg.pamr_steps else ""
        return (f"ZeroShotSegmenter({self.model_name}, {'ViT' if self.is_vit else 'ResNet'}, {weights}; "
                f"method={self.method} ({METHODS[self.method].paper}): {how}{extra}, size={cfg.size}, "
                f"{len(self.templates)} templates, logit_scale={self.logit_scale:g}, "
                f"autocast={self.autocast_dtype}, channels_last={self.channels_last})")

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def logit_scale(self) -> float:
        """Probabilities are softmax(logit_scale * scores): the config's, else CLIP's own (100 for OpenAI)."""
        return self.cfg.logit_scale or float(self.clip.logit_scale.detach().exp())

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
        return self._text(clean_class_names(class_names), templates)

    def _text(self, names: Sequence[str], templates=None) -> torch.Tensor:
        templates = get_templates(templates) if templates is not None else self.templates
        key = (templates, str(self.autocast_dtype))
        missing = [n for n in dict.fromkeys(names) if (n, key) not in self._cache]
        if missing:
            self._warn_long(missing, templates)
            prompts = [t.format(n) for n in missing for t in templates]
            embs = []
            for i in range(0, len(prompts), self.cfg.text_batch):
                tokens = self.tokenizer(prompts[i:i + self.cfg.text_batch]).to(self.device)
                with self._autocast():
                    embs.append(F.normalize(self.clip.encode_text(tokens).float(), dim=-1))
            emb = F.normalize(torch.cat(embs).reshape(len(missing), len(templates), -1).mean(1), dim=-1)
            for n, e in zip(missing, emb):
                self._cache[(n, key)] = e
        for n in names:
            self._cache.move_to_end((n, key))
        out = torch.stack([self._cache[(n, key)] for n in names]).to(self.device)
        while len(self._cache) > self.cfg.cache_size:
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
    def dense_embeddings(self, x: torch.Tensor, return_global: bool = False):
        """Normalised images (B, 3, H, W) -> dense embeddings (B, D, H/s, W/s) (float32, not unit length),
        and with return_global CLIP's global embedding (B, D) (equals encode_image at the native size)."""
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            if self.is_vit:
                dense, glob = vit_dense(self.encoder, x, self.plan, self.proxy, return_global)
            else:
                dense, glob = self._rn_dense(x, return_global)
        return (dense.float(), glob.float()) if return_global else dense.float()

    def _rn_dense(self, x: torch.Tensor, need_global: bool):
        enc = self.encoder
        c5 = enc.forward_features(x)[-1]
        b, _, h, w = c5.shape
        if self.plan.attention == "attention_pool":
            glob, dense = enc.attention_pool(c5)
            return dense, glob
        pool = enc.visual.attnpool
        tokens = enc.pool_tokens(c5)
        spatial = tokens[:, 1:] if self.cfg.value_pos_embed else c5.flatten(2).transpose(1, 2)
        dense = pool.c_proj(pool.v_proj(spatial)).transpose(1, 2).reshape(b, -1, h, w)
        glob = None
        if need_global:  # CLIP's pool: the mean token is the only query
            q, k, v = pool.q_proj(tokens[:, :1]), pool.k_proj(tokens), pool.v_proj(tokens)
            out = attention(q, k, v, pool.num_heads)[0]
            glob = pool.c_proj(out)[:, 0]
        return dense, glob

    def _score_maps(self, x: torch.Tensor, text: torch.Tensor, redundant: torch.Tensor | None = None):
        """Normalised images (B, 3, h, w) -> score maps (B, Q, h', w') of the input padded to `pad_to`, and
        the extent (h/s, w/s) of the feature cells that cover the unpadded input."""
        h, w = x.shape[2:]
        x = F.pad(x, (0, -w % self.pad_to, 0, -h % self.pad_to))  # zeros: the mean colour, once normalised
        dense = self.dense_embeddings(x)
        maps = score_maps(dense, text)
        if self.method == "clip_surgery":
            maps = feature_surgery(maps, None if redundant is None else score_maps(dense, redundant))
        return maps, (h / self.stride, w / self.stride)

    def working_image(self, rgb: np.ndarray, size: int | None = None, max_long_side: int | None = None,
                      antialias: bool = True) -> torch.Tensor:
        """(H, W, 3) uint8 -> the normalised working image (1, 3, h, w): short side `size`, long side at most
        `max_long_side` (defaults: the config's); uint8 resize, never a float copy of a huge input."""
        size = size or self.cfg.size
        hw = keep_ratio_size(*rgb.shape[:2], size, max_long_side or self.cfg.max_long_side or 4 * size)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
        if hw != tuple(rgb.shape[:2]):
            x = F.interpolate(x, size=hw, mode="bilinear", antialias=antialias, align_corners=False)
        return normalize_image(x.float()).to(self.device)

    @torch.no_grad()
    def image_maps(self, x: torch.Tensor, text: torch.Tensor, slide=None, window_batch: int = 4,
                   redundant: torch.Tensor | None = None, refine: bool = True):
        """The working image (1, 3, h, w) -> score maps (Q, h', w') and their extent: whole-image maps at the
        feature grid, or (slide = crop or (crop, stride)) sliding windows averaged at the working size;
        with PAMR (cfg.pamr_steps, refine=True) refined at the working size."""
        if slide is None:
            maps, extent = self._score_maps(x, text, redundant)
            maps = maps[0]
        else:
            crop, stride = (slide, max(1, 2 * slide // 3)) if isinstance(slide, int) else slide

            def windows(w: torch.Tensor) -> torch.Tensor:
                maps, extent = self._score_maps(w, text, redundant)
                return upsample(maps, w.shape[2:], extent)

            maps, extent = slide_inference(windows, x, crop, stride, window_batch)[0], tuple(x.shape[2:])
        if refine and self.cfg.pamr_steps:
            maps = upsample(maps, x.shape[2:], extent)[None]
            maps = pamr(x, maps, self.cfg.pamr_steps, self.cfg.pamr_dilations)
            maps, extent = maps[0], tuple(x.shape[2:])
        return maps, extent

    # --------------------------------------------------------------------------------------- predict
    @torch.no_grad()
    def predict(self, image, class_names, options: PredictOptions | None = None, **kwargs) -> ZeroShotResult:
        """Segment one image into `class_names` without training.

        image: path / PIL / numpy / tensor, any mode (see load_image).
        class_names: names, or per class a list of synonyms (the first is its name), or a mapping name ->
            synonyms; blank names raise, duplicates raise unless dedupe=True (keeping the first).
        options / keywords (PredictOptions): templates (this call's prompts); background: a float threshold,
            or pseudo-class name(s) ("background", ["wall", "floor"]) whose pixels get label BACKGROUND (-1);
            threshold with background_on="score" | "prob": best cosine / probability below it -> BACKGROUND;
            area_threshold (SCLIP's); size, max_long_side (working size); slide (crop or (crop, stride)
            windows over the working image, averaged like mmseg's slide inference); window_batch; max_side
            (decode smaller); dedupe; max_output_elements (bound on K*H*W of scores / probs); antialias.
        """
        opts = (options or PredictOptions()).replace(**kwargs) if kwargs else (options or PredictOptions())
        t0 = time.perf_counter()
        cq = build_queries(class_names, opts.background, opts.dedupe)
        rgb = load_image(image, opts.max_side)
        H, W = rgb.shape[:2]
        t1 = time.perf_counter()
        text = self._text(cq.texts, opts.templates)[list(cq.text_index)]
        surgery_one = self.method == "clip_surgery" and text.shape[0] == 1
        redundant = self._text([""], opts.templates) if surgery_one else None  # the authors' empty prompt
        t2 = time.perf_counter()
        x = self.working_image(rgb, opts.size, opts.max_long_side, opts.antialias)
        maps, extent = self.image_maps(x, text, opts.slide, opts.window_batch, redundant)
        t3 = time.perf_counter()
        k, query_class = cq.num_classes, cq.class_tensor()
        rule = LabelRule(k, query_class, opts.threshold, opts.background_on, self.logit_scale,
                         opts.area_threshold)
        labels = render_with_area(maps, extent, (H, W), rule).cpu()
        shape = (H, W)
        if k * H * W > opts.max_output_elements:
            f = math.sqrt(opts.max_output_elements / (k * H * W))
            shape = (max(1, int(H * f)), max(1, int(W * f)))
        scores, probs = class_maps(upsample(maps, shape, extent), query_class, k, self.logit_scale)
        t4 = time.perf_counter()
        timing = {"load": t1 - t0, "text": t2 - t1, "image": t3 - t2, "render": t4 - t3, "total": t4 - t0}
        return ZeroShotResult(scores=scores.cpu(), probs=probs.cpu(), labels=labels, class_names=cq.names,
                              image_size=(H, W), seconds=t4 - t0, timing=timing, info=self._info(cq, opts, x))

    def _info(self, cq, opts: PredictOptions, x: torch.Tensor) -> dict:
        info = {"model": self.model_name, "is_random": self.is_random, "method": self.method,
                "dense_mode": self.dense_mode, "working_size": tuple(x.shape[2:]), "slide": opts.slide,
                "background": opts.background, "background_names": cq.background, "threshold": opts.threshold,
                "queries": len(cq.text_index), "logit_scale": self.logit_scale,
                "pamr_steps": self.cfg.pamr_steps,
                "templates": len(get_templates(opts.templates)) if opts.templates else len(self.templates)}
        if self.is_vit:
            p = self.plan
            info.update(attention=p.attention, residual=p.residual, pos_embed=p.pos_embed)
        return info
