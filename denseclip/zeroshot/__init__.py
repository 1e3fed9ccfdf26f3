"""Training-free pixel-text score maps for any class names (zero-shot segmentation with a CLIP model).

    zs = ZeroShotSegmenter.from_pretrained("ViT-B-16", pretrained="openai")          # method="naclip"
    r = zs.predict("photo.jpg", ["sky", "tree", "person"])    # r.scores (K,H,W), r.probs, r.labels (H,W)
    r = zs.predict("photo.jpg", ["sky", "tree"], method="clearclip", pamr_steps=10)   # per call, same tower
    print(describe_methods())                                  # every method, and whose code it equals

CLIP's pooling mixes every position with every other, so each method changes how the *last* layer mixes
them: for ResNets the attention pool's value path ("maskclip", the default: MaskCLIP) or the full pool
with every position a query ("attention_pool": DenseCLIP's, barely localising); for ViTs CLIP's blocks
then a changed last block (vit.py has the formulas): "naclip" (the default: NACLIP), "sclip", "clearclip",
"proxyclip" (a DINO ViT's patch similarities as the attention), "clip_surgery", "maskclip", "vv",
"vanilla". Each equals its paper's released code when configured like it (METHODS names the code;
docs/zeroshot.md). PredictOptions holds a call's options: the method and its overrides (residual=,
attention=, pos_embed=), pamr_steps (PAMR at the output size, as NACLIP), templates, the working size and
sliding windows, synonyms and the peers' probability and area thresholds.
"""

from .classes import ClassQueries, build_queries
from .labels import BACKGROUND, LabelRule, labels_from_maps, upsample
from .methods import METHODS, Method, PredictOptions, describe_methods, resolve_method
from .pamr import pamr
from .proxy import ProxyAttention, create_proxy, proxy_attention
from .segmenter import ZeroShotResult, ZeroShotSegmenter
from .vit import feature_surgery, neighbourhood_bias, training_free_block

for _cls in (ZeroShotSegmenter, ZeroShotResult):
    _cls.__module__ = __name__  # their public home: denseclip.zeroshot.<name>

__all__ = [
    "BACKGROUND", "METHODS", "ClassQueries", "LabelRule", "Method", "PredictOptions", "ProxyAttention",
    "ZeroShotResult", "ZeroShotSegmenter", "build_queries", "create_proxy", "describe_methods",
    "feature_surgery", "labels_from_maps", "neighbourhood_bias", "pamr", "proxy_attention", "resolve_method",
    "training_free_block", "upsample",
]
