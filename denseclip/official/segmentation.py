"""The authors' segmentation checkpoints (mmseg 0.x `.pth`), translated to our segmentor in one place.

    cfg, state = load_official("denseclip_fpn_res50.pth")    # our config and our key names

Reading uses weights_only=True (no pickled code); the architecture is worked out from the tensors'
shapes; their key names (`backbone.*`, `text_encoder.*`, `context_decoder.*`, `contexts`, `gamma`,
`neck.*`, `decode_head.*`) become ours (`encoder.visual.*`, `prompting.*`, `neck.*`, `head.*`) with
one table, and *every* tensor is loaded (the text encoder's too: it drifted in their training).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ADE_SLIDE_512, ADE_SLIDE_640, DenseCLIPConfig
from ..vocab import ADE20K_CLASSES
from .common import (
    BASELINE_TEXT_CFG,
    class_names_for,
    count,
    read_official_checkpoint,
    resnet_tower,
    text_side,
    translate_keys,
)

# The authors' segmentation key prefixes -> ours (first match wins).
SEGMENTATION_KEYS = (
    ("backbone.fpn", "encoder.fpn"),  # the ViT necks are ours, beside the intact open_clip tower
    ("backbone.", "encoder.visual."),
    ("text_encoder.", "prompting.text_encoder."),
    ("context_decoder.", "prompting.context_decoder."),
    ("contexts", "prompting.contexts"),
    ("gamma", "prompting.gamma"),
    ("decode_head.", "head."),
    ("neck.", "neck."),
)
# Tensors we have no use for: mmseg's unused identity-head classifier; the embedding path of a CLIP+FPN
# baseline (some of their baselines carry the attention pool / ln_post / proj without using them).
UNUSED = ("identity_head.", "auxiliary_head.")
UNUSED_WITHOUT_TEXT = ("backbone.attnpool.", "backbone.ln_post.", "backbone.proj")


def _vit_tower(state: dict[str, torch.Tensor]) -> tuple[dict, int, str]:
    conv = state["backbone.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    res = int(round((state["backbone.positional_embedding"].shape[0] - 1) ** 0.5)) * patch
    mlp = state["backbone.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width
    vision_cfg = {"image_size": res, "patch_size": patch, "width": width, "head_width": 64, "mlp_ratio": mlp,
                  "layers": count(state, r"backbone\.transformer\.resblocks\.(\d+)\.")}
    proj = int(state["backbone.proj"].shape[1]) if "backbone.proj" in state else 512
    return vision_cfg, proj, f"ViT-{'B' if width == 768 else 'custom'}-{patch}"


def config_from_official(state: dict[str, torch.Tensor], meta: dict | None = None,
                         base: DenseCLIPConfig | None = None) -> DenseCLIPConfig:
    """A DenseCLIPConfig that fits the tensors of an authors' checkpoint (RN50 / RN101 / ViT-B/16 ...)."""
    if "decode_head.conv_seg.weight" not in state:
        hint = " (it holds a detector: load it with denseclip.load_detector)" if any(
            k.startswith(("bbox_head.", "roi_head.")) for k in state) else ""
        raise ValueError(f"not a DenseCLIP/mmseg segmentation checkpoint: no decode_head.conv_seg.weight"
                         f"{hint}")
    num_classes, head_channels = state["decode_head.conv_seg.weight"].shape[:2]
    text = text_side(state)
    if "backbone.layer1.0.conv1.weight" in state:  # CLIP ResNet
        vision_cfg, pooled, name = resnet_tower(state, base.input_resolution if base is not None else 512)
        width = vision_cfg["width"]
        stage_ch, test, vit = [width * 4 * 2 ** i for i in range(4)], ADE_SLIDE_512, False
    elif "backbone.class_embedding" in state:  # CLIP ViT
        vision_cfg, pooled, name = _vit_tower(state)
        stage_ch, vit = [vision_cfg["width"]] * 4, True
        test = ADE_SLIDE_640 if vision_cfg["image_size"] >= 640 else ADE_SLIDE_512
    else:
        raise ValueError("cannot tell the backbone: expected backbone.layer1.* (CLIP ResNet) or "
                         "backbone.class_embedding (CLIP ViT) in the checkpoint")
    text_cfg, embed_dim, prompt = text if text is not None else (BASELINE_TEXT_CFG, pooled or 1024, None)
    arch = {"embed_dim": int(embed_dim), "vision_cfg": vision_cfg, "text_cfg": dict(text_cfg)}
    lateral_in = [state[f"neck.lateral_convs.{i}.conv.weight"].shape[1] for i in range(4)]
    concat = next((i for i in range(4) if lateral_in[i] - stage_ch[i] == num_classes), 2 if vit else 3)
    start = base if base is not None else DenseCLIPConfig(test=test)
    return start.replace(
        name=f"official-{'denseclip' if prompt else 'fpn-clip'}-{name.lower()}", clip_model=name,
        clip_pretrained=None, clip_arch=arch, quick_gelu=True, backbone="clip",
        input_resolution=vision_cfg["image_size"], vit_official_cls=True,
        class_names=class_names_for(num_classes, meta or {}, base, ADE20K_CLASSES), score_concat_index=concat,
        neck_channels=state["neck.fpn_convs.0.conv.weight"].shape[0], head_channels=head_channels,
        prompt=prompt)


def translate(state: dict[str, torch.Tensor], use_text: bool) -> dict[str, torch.Tensor]:
    """The authors' segmentation state dict under our key names (unused tensors dropped)."""
    return translate_keys(state, SEGMENTATION_KEYS, UNUSED + (() if use_text else UNUSED_WITHOUT_TEXT),
                          "segmentation")


def load_official(path: str | Path, base: DenseCLIPConfig | None = None,
                  class_names: tuple[str, ...] | None = None) -> tuple[DenseCLIPConfig, dict]:
    """(config, state dict in our names) of an authors' segmentation checkpoint. `base` supplies what the
    tensors cannot tell (test pipeline, ViT taps); `class_names` replace (or supply) meta["CLASSES"]."""
    state, meta = read_official_checkpoint(path, class_names)  # names first: a file may carry none
    cfg = config_from_official(state, meta, base)
    return cfg, translate(state, cfg.use_text)
