"""The DenseCLIP authors' released checkpoints (mmcv `.pth`), translated to our models in one place.

    cfg, state = load_official("denseclip_fpn_res50.pth")    # our config and our key names

Reading uses weights_only=True (no pickled code); the architecture is worked out from the tensors'
shapes; their key names (`backbone.*`, `text_encoder.*`, `context_decoder.*`, `contexts`, `gamma`,
`neck.*`, `decode_head.*`) become ours (`encoder.visual.*`, `prompting.*`, `neck.*`, `head.*`) with
one table, and *every* tensor is loaded (the text encoder's too: it drifted in their training).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .config import ADE_SLIDE_512, ADE_SLIDE_640, DenseCLIPConfig, PromptConfig
from .vocab import ADE20K_CLASSES

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


def read_official_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) of an mmcv checkpoint, loaded without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as first:  # mmcv metadata may hold numpy scalars: allow just those types
        import numpy as np

        safe = [np.dtype, np.ndarray, type(np.dtype("float64")), type(np.dtype("int64"))]
        try:
            safe.append(np._core.multiarray.scalar)
            safe.append(np._core.multiarray._reconstruct)
        except AttributeError:
            pass
        try:
            with torch.serialization.safe_globals(safe):
                ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:
            raise ValueError(f"cannot read {path} as a checkpoint with weights_only=True ({first}); "
                             "is it a PyTorch/mmcv .pth file?") from first
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(ckpt).__name__})")
    state = ckpt.get("state_dict", ckpt)
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items() if torch.is_tensor(v)}
    if not state:
        raise ValueError(f"{path} holds no tensors")
    meta = ckpt.get("meta") or {}
    return state, meta if isinstance(meta, dict) else {}


def _count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in state if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def config_from_official(state: dict[str, torch.Tensor], meta: dict | None = None,
                         base: DenseCLIPConfig | None = None) -> DenseCLIPConfig:
    """A DenseCLIPConfig that fits the tensors of an authors' checkpoint (RN50 / RN101 / ViT-B/16 ...)."""
    meta = meta or {}
    if "decode_head.conv_seg.weight" not in state:
        raise ValueError("not a DenseCLIP/mmseg segmentation checkpoint: no decode_head.conv_seg.weight")
    num_classes, head_channels = state["decode_head.conv_seg.weight"].shape[:2]
    use_text = "text_encoder.token_embedding.weight" in state
    text_cfg, embed_dim, extra = {}, None, {"prompt": None}
    if use_text:
        tw = state["text_encoder.token_embedding.weight"].shape[1]
        text_cfg = {"context_length": 77, "vocab_size": state["text_encoder.token_embedding.weight"].shape[0],
                    "width": tw, "heads": tw // 64,
                    "layers": _count(state, r"text_encoder\.transformer\.resblocks\.(\d+)\.")}
        embed_dim = state["text_encoder.text_projection"].shape[1]
        m = state["contexts"].shape[1]
        budget = state["text_encoder.positional_embedding"].shape[0] - m
        dw = state["context_decoder.text_proj.1.weight"].shape[0]
        extra = {"prompt": PromptConfig(
            num_contexts=m, class_token_budget=budget, decoder_width=dw, decoder_heads=max(dw // 64, 1),
            decoder_layers=_count(state, r"context_decoder\.decoder\.(\d+)\."), context_decoder=True)}
    if "backbone.layer1.0.conv1.weight" in state:  # CLIP ResNet
        layers = [_count(state, rf"backbone\.layer{i}\.(\d+)\.") for i in range(1, 5)]
        width = state["backbone.conv1.weight"].shape[0] * 2
        pos = state.get("backbone.attnpool.positional_embedding")  # absent in their CLIPResNet baselines
        res = int(round((pos.shape[0] - 1) ** 0.5)) * 32 if pos is not None else \
            (base.input_resolution if base is not None else 512)
        vision_cfg = {"image_size": res, "layers": layers, "width": width, "head_width": 64}
        embed_dim = embed_dim or (state["backbone.attnpool.c_proj.weight"].shape[0] if pos is not None else 1024)
        stage_ch = [width * 4 * 2 ** i for i in range(4)]
        name = {(3, 4, 6, 3): "RN50", (3, 4, 23, 3): "RN101"}.get(tuple(layers), "RN-custom")
        test, vit = ADE_SLIDE_512, False
    elif "backbone.class_embedding" in state:  # CLIP ViT
        conv = state["backbone.conv1.weight"]
        width, patch = conv.shape[0], conv.shape[-1]
        n_layers = _count(state, r"backbone\.transformer\.resblocks\.(\d+)\.")
        res = int(round((state["backbone.positional_embedding"].shape[0] - 1) ** 0.5)) * patch
        mlp = state["backbone.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width
        vision_cfg = {"image_size": res, "patch_size": patch, "width": width, "layers": n_layers,
                      "head_width": 64, "mlp_ratio": mlp}
        embed_dim = embed_dim or (state["backbone.proj"].shape[1] if "backbone.proj" in state else 512)
        stage_ch = [width] * 4
        name = f"ViT-{'B' if width == 768 else 'custom'}-{patch}"
        test, vit = ADE_SLIDE_640 if res >= 640 else ADE_SLIDE_512, True
    else:
        raise ValueError("cannot tell the backbone: expected backbone.layer1.* (CLIP ResNet) or "
                         "backbone.class_embedding (CLIP ViT) in the checkpoint")
    if not use_text:  # CLIP+FPN baseline: a text tower is still part of the open_clip skeleton
        text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 1}
    arch = {"embed_dim": int(embed_dim), "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    lateral_in = [state[f"neck.lateral_convs.{i}.conv.weight"].shape[1] for i in range(4)]
    concat = next((i for i in range(4) if lateral_in[i] - stage_ch[i] == num_classes), 3 if not vit else 2)
    names = meta.get("CLASSES")
    if names is None:
        names = base.class_names if base is not None and len(base.class_names) == num_classes else \
            ADE20K_CLASSES if num_classes == 150 else None
    if names is None or len(names) != num_classes:
        raise ValueError(f"the checkpoint has {num_classes} classes but no matching class names; "
                         "pass class_names=[...]")
    start = base if base is not None else DenseCLIPConfig(test=test)
    return start.replace(
        name=f"official-{'denseclip' if use_text else 'fpn-clip'}-{name.lower()}", clip_model=name,
        clip_pretrained=None, clip_arch=arch, quick_gelu=True, backbone="clip", input_resolution=res,
        vit_official_cls=True, class_names=tuple(names), score_concat_index=concat,
        neck_channels=state["neck.fpn_convs.0.conv.weight"].shape[0], head_channels=head_channels,
        **extra)


def translate(state: dict[str, torch.Tensor], use_text: bool) -> dict[str, torch.Tensor]:
    """The authors' segmentation state dict under our key names (unused tensors dropped)."""
    drop = UNUSED + (() if use_text else UNUSED_WITHOUT_TEXT)
    out = {}
    for key, tensor in state.items():
        if key.startswith(drop):
            continue
        theirs, ours = next(((a, b) for a, b in SEGMENTATION_KEYS if key.startswith(a)), (None, None))
        if theirs is None:
            raise ValueError(f"unexpected tensor {key!r} in a DenseCLIP segmentation checkpoint")
        out[ours + key[len(theirs):]] = tensor
    return out


def authors_name(key: str) -> str:
    """Our key under the authors' name (for messages about their files)."""
    return next((a + key[len(b):] for a, b in SEGMENTATION_KEYS if key.startswith(b)), key)


def load_official(path: str | Path, base: DenseCLIPConfig | None = None,
                  class_names: tuple[str, ...] | None = None) -> tuple[DenseCLIPConfig, dict[str, torch.Tensor]]:
    """(config, state dict in our names) of an authors' segmentation checkpoint. `base` supplies what the
    tensors cannot tell (test pipeline, ViT taps); `class_names` replace (or supply) meta["CLASSES"]."""
    state, meta = read_official_checkpoint(path)
    if class_names is not None:  # before inferring the config: a checkpoint may carry no names
        meta = {**meta, "CLASSES": tuple(class_names)}
    cfg = config_from_official(state, meta, base)
    return cfg, translate(state, cfg.use_text)
