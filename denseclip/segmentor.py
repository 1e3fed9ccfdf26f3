"""The DenseCLIP segmentor: encoder + context-aware prompting + pixel-text score maps + FPN + losses.

Follow a tensor:
    images (B,3,H,W) -> encoder -> stage features C2..C5, dense z (B,D,h,w), global z_g (B,D)
    t  = text_encoder(class tokens, contexts)                       (K, D)   cached in eval
    t' = t + gamma * context_decoder(t, [z_g; z])                    (B, K, D)
    S  = normalize(z) . normalize(t')^T                              (B, K, h, w)  score maps
    features[score_concat_index] = cat(features[i], S) -> FPN -> FPN head -> logits (B, K, H/4, W/4)
    train: CE(logits, labels) + aux_loss_weight * CE(S / tau, labels)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import DenseCLIPConfig
from .decoders import FPN, FPNHead
from .encoders import TimmEncoder, encoder_from_clip
from .optim import param_groups
from .prompting import LanguageGuidance
from .vocab import clean_class_names


def check_images(images: torch.Tensor) -> None:
    """Clear errors for inputs the model cannot take."""
    if not torch.is_tensor(images) or images.ndim != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}; "
                         "use denseclip.predict() for PIL images or numpy arrays")
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 channels (RGB), got {images.shape[1]} in shape {tuple(images.shape)}")
    if images.shape[2] < 32 or images.shape[3] < 32:
        raise ValueError(f"images must be at least 32x32 pixels, got {tuple(images.shape[2:])}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf values")


def score_maps(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Pixel-text matching: cosine similarity of every pixel with every class.

    dense (B, D, H, W), text (B, K, D) or (K, D) -> S (B, K, H, W) in [-1, 1].
    """
    dense = F.normalize(dense, dim=1)
    text = F.normalize(text, dim=-1)
    if text.ndim == 2:
        return torch.einsum("bchw,kc->bkhw", dense, text)
    return torch.einsum("bchw,bkc->bkhw", dense, text)


class DenseCLIP(LanguageGuidance):
    """DenseCLIP (or the CLIP+FPN baseline when `cfg.use_text` is False).

    Submodule and parameter names match the authors' checkpoints: `backbone`, `text_encoder`,
    `context_decoder`, `contexts` (1, M, width), `gamma` (D,), `neck`, `decode_head`.
    Build it with `denseclip.build_model(preset_or_config)`.
    """

    def __init__(self, cfg: DenseCLIPConfig, clip_model: nn.Module | None):
        super().__init__()
        self.cfg = cfg
        k = cfg.num_classes
        # --- visual encoder ---
        if cfg.backbone == "clip":
            if clip_model is None:
                raise ValueError("a CLIP backbone needs the open_clip model (build with denseclip.build_model)")
            self.backbone = encoder_from_clip(  # the ViT options are ignored for a ResNet tower
                clip_model.visual, cfg.input_resolution, out_indices=cfg.vit_out_indices,
                official_cls=cfg.vit_official_cls, drop_path_rate=cfg.drop_path_rate)
            embed_dim = self.backbone.embed_dim if cfg.use_text else None
        else:
            text_dim = clip_model.text_projection.shape[-1] if (cfg.use_text and clip_model is not None) else None
            self.backbone = TimmEncoder(cfg.backbone, text_dim, pretrained=cfg.backbone_pretrained)
            embed_dim = text_dim
        # --- text side ---
        in_channels = list(self.backbone.feature_channels)
        if cfg.use_text:
            if clip_model is None:
                raise ValueError("use_text=True needs the open_clip model for its text encoder")
            self.init_language_guidance(clip_model, embed_dim, cfg)
            if not 0 <= cfg.score_concat_index < len(in_channels):
                raise ValueError(f"score_concat_index {cfg.score_concat_index} must be in [0, {len(in_channels)})")
            in_channels[cfg.score_concat_index] += k
        else:
            clean_class_names(cfg.class_names)
        self.neck = FPN(in_channels, cfg.neck_channels)
        self.decode_head = FPNHead([cfg.neck_channels] * 4, cfg.head_channels, k, self.backbone.feature_strides,
                                   cfg.head_dropout)

    # ------------------------------------------------------------------ text side
    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.cfg.class_names)

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Rename the classes (same count: the head has one output per class). Invalidates the text cache."""
        class_names = tuple(class_names)
        clean_class_names(class_names)
        if len(class_names) != self.cfg.num_classes:
            raise ValueError(f"the model has {self.cfg.num_classes} classes; got {len(class_names)} names")
        if self.cfg.use_text:
            self.set_texts(class_names)
        self.cfg = self.cfg.replace(class_names=class_names)

    # ------------------------------------------------------------------ forward
    def forward_dense(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) -> {"logits": (B, K, H/4, W/4), "score_map": (B, K, H/32, W/32) or absent,
        "text_embeddings": (B, K, D) t' or absent}."""
        check_images(images)
        enc = self.backbone(images)
        feats = list(enc.features)
        out: dict[str, torch.Tensor] = {}
        if self.cfg.use_text:
            text = self.guided_text_embeddings(enc.global_embedding, enc.dense)
            s = score_maps(enc.dense, text)
            i = self.cfg.score_concat_index
            if s.shape[2:] != feats[i].shape[2:]:
                raise ValueError(f"score maps {tuple(s.shape[2:])} and stage {i} features {tuple(feats[i].shape[2:])} "
                                 "differ in size; pick the stage at the embedding stride (score_concat_index)")
            feats[i] = torch.cat([feats[i], s.to(feats[i].dtype)], dim=1)
            out["score_map"] = s
            out["text_embeddings"] = text
        out["logits"] = self.decode_head(self.neck(feats))
        return out

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        """Without labels: logits (B, K, H/4, W/4). With labels (B, H, W) (ignore = cfg.ignore_index):
        a dict of losses {"loss_seg", "loss_aux" (DenseCLIP only), "loss" (their sum)}."""
        out = self.forward_dense(images)
        if labels is None:
            return out["logits"]
        return self.losses(out, labels)

    def losses(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 3:
            raise ValueError(f"labels must be (B, H, W), got {tuple(labels.shape)}")
        labels = labels.long()
        losses = {"loss_seg": self._ce(out["logits"], labels)}
        if "score_map" in out and self.cfg.aux_loss_weight > 0:
            losses["loss_aux"] = self.cfg.aux_loss_weight * self._ce(out["score_map"] / self.cfg.tau, labels)
        losses["loss"] = sum(losses.values())
        return losses

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """mmseg's decode-head loss: logits resized (bilinear) to the label size, CE with ignore_index."""
        logits = F.interpolate(logits.float(), size=labels.shape[1:], mode="bilinear", align_corners=False)
        ignore = self.cfg.ignore_index
        bad = (labels != ignore) & ((labels < 0) | (labels >= logits.shape[1]))
        if bad.any():
            raise ValueError(f"labels contain values outside [0, {logits.shape[1] - 1}] other than ignore={ignore}: "
                             f"{torch.unique(labels[bad]).tolist()[:10]}")
        loss = F.cross_entropy(logits, labels, ignore_index=ignore, reduction="none")
        if self.cfg.loss_avg_non_ignore:
            return loss.sum() / (labels != ignore).sum().clamp(min=1)
        return loss.mean()  # mmseg 0.x: ignored pixels count in the denominator (as the authors trained)

    # ------------------------------------------------------------------ parameter groups
    def param_groups(self, lr: float, weight_decay: float, backbone_lr_mult: float = 0.1,
                     text_encoder_lr_mult: float = 0.0, norm_decay: bool = False) -> list[dict]:
        """AdamW groups as the authors' recipe: backbone lr x0.1, text encoder lr x0 (frozen), no weight
        decay on parameters whose names contain "norm" (outside those two, as mmcv), the rest at lr."""
        return param_groups(self, lr, weight_decay, {"backbone.": backbone_lr_mult,
                                                     "text_encoder.": text_encoder_lr_mult}, norm_decay)

    def extra_repr(self) -> str:
        return f"name={self.cfg.name!r}, classes={self.cfg.num_classes}, use_text={self.cfg.use_text}"


def build_model(preset_or_config: str | DenseCLIPConfig = "denseclip-rn50-ade20k", pretrained: bool | str | None = True,
                class_names: Sequence[str] | None = None, **overrides) -> DenseCLIP:
    """Build a DenseCLIP model from a preset name or a DenseCLIPConfig (in train mode, on CPU).

    pretrained=True loads the config's CLIP weights (`clip_pretrained`, e.g. OpenAI's) and, for timm
    backbones, timm's ImageNet weights; False/None builds random weights (tests, offline); a string is an
    open_clip tag or a local CLIP weights file. `class_names` and `overrides` replace config fields.
    """
    from .config import get_preset, resolve_config
    from .weights import clip_for

    cfg = resolve_config(preset_or_config, get_preset, class_names, **overrides)
    tag = cfg.clip_pretrained if pretrained is True else (pretrained or None)
    if not pretrained and cfg.backbone != "clip":
        cfg = cfg.replace(backbone_pretrained=False)
    return DenseCLIP(cfg, clip_for(cfg, tag)).train()
