"""Training-free pixel-text score maps for any class names (zero-shot segmentation with a CLIP model).

    zs = ZeroShotSegmenter.from_pretrained("ViT-B-16", pretrained="openai")          # method="naclip"
    r = zs.predict("photo.jpg", ["sky", "tree", "person"])    # r.scores (K,H,W), r.probs, r.labels (H,W)
    r = zs.predict("photo.jpg", ["sky", "tree"], method="clearclip", pamr_steps=10)   # per call, same tower
    print(describe_methods())                                  # every method, and whose code it equals

CLIP's pooling mixes every position with every other, so each method changes how the *last* layer
mixes them (METHODS; `method=` picks one, PredictOptions holds its options, per call):

ResNets
  "maskclip" (default): each C5 position through the attention pool's value path only, v_proj then c_proj
      (MaskCLIP, Zhou et al., ECCV 2022); no positional embedding unless `value_pos_embed=True`.
  "attention_pool": the full attention pool with every position a query (DenseCLIP, Rao et al., CVPR
      2022); each position attends to the whole image, so its maps barely localise (kept for tutorials).
ViTs (CLIP's blocks, then the last one changed; see vit.py for the formulas)
  "naclip" (default): key-key attention + a Gaussian neighbourhood bias (std 5), residual and FFN dropped
      (NACLIP, Hajimiri et al., WACV 2025; `attention="nonly"`, the bias alone, is its other strategy).
  "sclip": (softmax(qq^T) + softmax(kk^T)) v, residual and FFN kept (SCLIP).
  "clearclip": softmax(qq^T) v, residual and FFN dropped (ClearCLIP, Lan et al., ECCV 2024).
  "proxyclip": a DINO ViT's patch similarities as the attention over CLIP's values (ProxyCLIP, Lan et
      al., ECCV 2024); the maps come at the proxy's grid (stride 8 for DINO ViT-B/8).
  "clip_surgery": a value-value path beside the last 6 blocks, FFN skipped, then feature surgery on the
      scores with class weights from the class token (CLIP Surgery, Li et al., 2023).
  "maskclip": out_proj(v) per token, residual and FFN kept (MaskCLIP's ViT variant).
  "vv": softmax(vv^T) v in the last block only, residual and FFN dropped (CLIP Surgery's formula on one
      block, not CLIP Surgery).
  "vanilla": CLIP's own q-k attention (the baseline the others fix).
  residual= / attention= / pos_embed= override a method's choice ("bicubic_dino" is the positional
  embedding resize of SCLIP, NACLIP, ClearCLIP and ProxyCLIP; "bicubic" MaskCLIP's; "bilinear" DenseCLIP's
  and CLIP Surgery's).
Any method: `pamr_steps=10` refines the maps with PAMR (dilations 8 and 16) at the output size, as NACLIP;
`logit_scale=40` sets the probabilities' temperature as the peers do; class synonyms and the peers'
probability and area thresholds are predict options. Then ln_post and proj on every patch token give
(B, D, h, w) in CLIP's joint space.
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
