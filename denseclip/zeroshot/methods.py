"""The training-free methods by name, and the options of one prediction (`PredictOptions`).

Each method is what a paper's released code computes, named after the paper; `METHODS` lists them for
a user interface (`describe_methods()` gives one line each). The method, its options and PAMR are chosen
per call: one loaded CLIP tower serves every method of its kind (the methods change only the last block).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config


@dataclass(frozen=True)
class Method:
    """A training-free method: what the last ViT block (or the ResNet's attention pool) becomes."""

    towers: tuple[str, ...]  # "vit", "resnet"
    attention: str  # the last block's attention (see vit.py), "value" / "attention_pool" for ResNets
    residual: bool  # keep the last block's residual connection and FFN
    pos_embed: str  # how the ViT positional embedding meets other grids (the peer's own code)
    summary: str  # one line for a user interface
    paper: str
    code: str  # the released code this method equals when configured like it


METHODS: dict[str, Method] = {
    "maskclip": Method(
        ("resnet", "vit"), "value", True, "bicubic",
        "each position through the value path only (no query-key mixing)",
        "MaskCLIP, Zhou et al., ECCV 2022", "github.com/chongzhou96/MaskCLIP"),
    "attention_pool": Method(
        ("resnet",), "attention_pool", True, "bilinear",
        "CLIP's attention pool with every position a query (barely localises; for tutorials)",
        "DenseCLIP, Rao et al., CVPR 2022", "github.com/raoyongming/DenseCLIP"),
    "sclip": Method(
        ("vit",), "csa", True, "bicubic_dino",
        "correlative self-attention softmax(qq) + softmax(kk), residual and FFN kept",
        "SCLIP, Wang et al., 2024", "github.com/wangf3014/SCLIP"),
    "clearclip": Method(
        ("vit",), "qq", False, "bicubic_dino",
        "query-query attention, residual and FFN of the last block dropped",
        "ClearCLIP, Lan et al., ECCV 2024", "github.com/mc-lan/ClearCLIP"),
    "naclip": Method(
        ("vit",), "naclip", False, "bicubic_dino",
        "key-key attention plus a Gaussian neighbourhood bias (std 5), residual and FFN dropped",
        "NACLIP, Hajimiri et al., WACV 2025", "github.com/sinahmr/NACLIP"),
    "proxyclip": Method(
        ("vit",), "proxy", False, "bicubic_dino",
        "attention from a vision foundation model's features (DINO) applied to CLIP's values",
        "ProxyCLIP, Lan et al., ECCV 2024", "github.com/mc-lan/ProxyCLIP"),
    "clip_surgery": Method(
        ("vit",), "surgery", True, "bilinear",
        "value-value path beside the last 6 blocks (FFN skipped) and feature surgery on the scores",
        "CLIP Surgery, Li et al., 2023", "github.com/xmed-lab/CLIP_Surgery"),
    "vv": Method(
        ("vit",), "vv", False, "bilinear",
        "value-value attention in the last block only, residual and FFN dropped (not full CLIP Surgery)",
        "the v-v formula of CLIP Surgery / GEM on one block", "-"),
    "vanilla": Method(
        ("vit",), "qk", True, "bilinear",
        "CLIP's own last block for every token (the baseline the others fix)", "CLIP", "-"),
}
DEFAULT_METHOD = {"vit": "naclip", "resnet": "maskclip"}
ATTENTIONS = ("qk", "qq", "kk", "vv", "csa", "value", "naclip", "nonly")
POS_EMBEDS = ("bilinear", "bicubic", "bicubic_dino")


def resolve_method(name: str | None, tower: str) -> str:
    """A method name checked against the tower ("vit" or "resnet"); None: the tower's default."""
    if name is None:
        return DEFAULT_METHOD[tower]
    if name not in METHODS:
        raise ValueError(f"unknown zero-shot method {name!r}; choose from {sorted(METHODS)}")
    if tower not in METHODS[name].towers:
        ok = sorted(k for k, m in METHODS.items() if tower in m.towers)
        kind = "ViT" if tower == "vit" else "ResNet"
        raise ValueError(f"method {name!r} is not available for a {kind} CLIP; choose from {ok}")
    return name


def describe_methods() -> str:
    """One line per method: name, what it does, the paper whose code it equals."""
    return "\n".join(f"{k:<15} {m.summary} [{m.paper}; {'/'.join(m.towers)}]" for k, m in METHODS.items())


@dataclass
class PredictOptions(Config):
    """One prediction: the method and its options, the prompts, the image size, the labels. A segmenter
    holds defaults (`ZeroShotSegmenter(..., **defaults)`); `predict(..., **changes)` changes them per call.
    None means "the method's own choice"."""

    # --- the method (the last block) and refinement
    method: str | None = None  # a METHODS key; None: "naclip" for ViTs, "maskclip" for ResNets
    residual: bool | None = None  # keep the last ViT block's residual + FFN (NACLIP's arch "vanilla")
    attention: str | None = None  # override the last block's attention (one of ATTENTIONS)
    pos_embed: str | None = None  # "bilinear" (DenseCLIP), "bicubic" (size-based), "bicubic_dino" (peers)
    value_pos_embed: bool = False  # ResNet maskclip: add the positional embedding before the value path
    gaussian_std: float = 5.0  # NACLIP's neighbourhood: std of the Gaussian bias, in patches
    surgery_blocks: int = 6  # CLIP Surgery: blocks with the parallel value-value path
    proxy_beta: float = 1.2  # ProxyCLIP's normalisation: similarity - beta * mean ...
    proxy_gamma: float = 3.0  # ... times gamma; negative entries masked out
    pamr_steps: int = 0  # PAMR after any method, at the output size (NACLIP: 10 steps)
    pamr_dilations: tuple[int, ...] = (8, 16)
    # --- the text
    templates: str | tuple[str, ...] = "simple"  # "single", "simple", "imagenet" (the peers' 80) or a list
    logit_scale: float | None = None  # probabilities softmax(scale * scores); None: CLIP's own (100)
    # --- the image
    size: int = 448  # working size: short side ...
    max_long_side: int | None = None  # ... long side at most this (default 4 * size)
    slide: int | tuple[int, int] | None = None  # crop or (crop, stride) sliding windows
    window_batch: int = 4  # windows per forward pass (memory, not results)
    max_side: int | None = None  # decode path inputs at most this large
    antialias: bool = True  # antialiased resize to the working size (the peers' mmcv resize has none)
    # --- the labels and the outputs
    background: float | str | tuple | None = None  # a threshold (= `threshold`) or pseudo-class name(s)
    threshold: float | None = None  # best score / probability below it -> BACKGROUND
    background_on: str = "score"  # what `threshold` applies to: "score" (cosine) or "prob"
    area_threshold: float | None = None  # SCLIP: classes covering <= this share of the labelled pixels drop
    dedupe: bool = False  # merge duplicate class names instead of raising
    max_output_elements: int = 1 << 26  # bound on K * H * W of the returned scores / probs

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in METHODS:
            resolve_method(self.method, "vit")  # raises with the list of names
        own = METHODS[self.method].attention if self.method else None  # resolved() fills it in
        if self.attention is not None and self.attention not in (*ATTENTIONS, own):
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.pos_embed is not None and self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}")
        if self.pamr_steps < 0 or self.gaussian_std <= 0 or self.surgery_blocks < 1 or self.size < 1:
            raise ValueError("pamr_steps must be >= 0, gaussian_std > 0, surgery_blocks >= 1, size >= 1")
        if self.background_on not in ("score", "prob"):
            raise ValueError(f"background_on must be 'score' or 'prob', got {self.background_on!r}")
        if isinstance(self.background, (int, float)) and not isinstance(self.background, bool):
            if self.threshold is not None:
                raise ValueError("give the threshold once: background=<float> or threshold=<float>")
            self.threshold, self.background = float(self.background), None
        for name in ("templates", "slide", "background"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))

    def resolved(self, tower: str) -> PredictOptions:
        """These options with the method's own choices filled in (method, attention, residual, pos_embed)."""
        name = resolve_method(self.method, tower)
        m = METHODS[name]
        chosen = {"attention": self.attention or m.attention, "pos_embed": self.pos_embed or m.pos_embed,
                  "residual": m.residual if self.residual is None else self.residual}
        if chosen == {"attention": self.attention, "pos_embed": self.pos_embed, "residual": self.residual} \
                and name == self.method:
            return self  # resolved already
        if tower == "resnet" and chosen != {k: getattr(m, k) for k in chosen}:
            raise ValueError("attention, residual and pos_embed apply to ViTs only; ResNets have "
                             "method='maskclip' (value_pos_embed=True/False) or 'attention_pool'")
        return self.replace(method=name, **chosen)
