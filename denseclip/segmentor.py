"""The DenseCLIP segmentor: encoder + context-aware prompting + pixel-text score maps + FPN + losses.

Follow a tensor:
    images (B,3,H,W) -> encoder -> stage features C2..C5, dense z (B,D,h,w), global z_g (B,D)
    t' = prompting(z_g, z) = t + gamma * context_decoder(t, [z_g; z])    (B, K, D)
    S  = normalize(z) . normalize(t')^T                                    (B, K, h, w)  score maps
    features[score_concat_index] = cat(features[i], S) -> FPN -> FPN head -> logits (B, K, H/4, W/4)
    train: CE(logits, labels) + aux_loss_weight * CE(S / tau, labels)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import HubMixin, build, load_model
from .config import DenseCLIPConfig, resolve
from .decoders import FPN, FPNHead
from .encoders import TimmEncoder, encoder_from_clip
from .param_groups import backbone_param_groups
from .prompting import ContextPrompting, prompting_for
from .vocab import clean_class_names


class DenseCLIP(nn.Module, HubMixin, tags=["semantic-segmentation", "denseclip", "clip"]):
    """DenseCLIP, or the CLIP+FPN baseline when `prompting` is None. Build it with `denseclip.build_model`.

    encoder: images -> stage features (+ dense / global embeddings); prompting: the text side
    (`ContextPrompting`) or None; neck: FPN over the stage features (the score maps concatenated onto
    stage `cfg.score_concat_index`); head: the semantic-FPN head; cfg: the config that built them.
    """

    def __init__(self, encoder: nn.Module, prompting: ContextPrompting | None, neck: FPN, head: FPNHead,
                 cfg: DenseCLIPConfig):
        super().__init__()
        self.encoder, self.prompting, self.neck, self.head, self.cfg = encoder, prompting, neck, head, cfg

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.cfg.class_names)

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Rename the classes (same count: the head has one output per class)."""
        class_names = tuple(class_names)
        clean_class_names(class_names)
        if len(class_names) != self.cfg.num_classes:
            raise ValueError(f"the model has {self.cfg.num_classes} classes; got {len(class_names)} names")
        if self.prompting is not None:
            self.prompting.set_class_names(class_names)
        self.cfg = self.cfg.replace(class_names=class_names)

    def forward_dense(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) -> {"logits": (B, K, H/4, W/4), and for DenseCLIP "score_map" (B, K, h, w)
        and "text_embeddings" t' (B, K, D)}."""
        enc = self.encoder(images)
        feats, out = enc.features, {}
        if self.prompting is not None:
            feats, out["score_map"], out["text_embeddings"] = self.prompting.onto_stage(
                enc, self.cfg.score_concat_index)
        out["logits"] = self.head(self.neck(feats))
        return out

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        """Without labels: logits (B, K, H/4, W/4). With labels (B, H, W) (ignore = cfg.ignore_index):
        a dict of losses {"loss_seg", "loss_aux" (DenseCLIP only), "loss" (their sum)}."""
        if images.ndim != 4 or images.shape[1] != 3:  # shapes only: no host sync on a training step
            raise ValueError(f"images must be a (B, 3, H, W) tensor, got {tuple(images.shape)}; "
                             "use denseclip.predict() for files, PIL images or numpy arrays")
        out = self.forward_dense(images)
        return out["logits"] if labels is None else self.losses(out, labels)

    def losses(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """CE of the logits (+ the auxiliary CE of the score maps / tau) against labels (B, H, W); labels out
        of range raise in cross_entropy (the datasets check them before training)."""
        labels = labels[:, 0] if labels.ndim == 4 and labels.shape[1] == 1 else labels
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
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        ignore = self.cfg.ignore_index
        loss = F.cross_entropy(logits, labels, ignore_index=ignore, reduction="none")
        if self.cfg.loss_avg_non_ignore:
            return loss.sum() / (labels != ignore).sum().clamp(min=1)
        return loss.mean()  # mmseg 0.x: ignored pixels count in the denominator (as the authors trained)

    param_groups = backbone_param_groups

    def extra_repr(self) -> str:
        return f"name={self.cfg.name!r}, classes={self.cfg.num_classes}, use_text={self.cfg.use_text}"

    @classmethod
    def load_file(cls, path: Path) -> DenseCLIP:
        return load_checkpoint(path)

    def card_text(self, metrics: dict | None = None, repo_id: str = "user/repo") -> str:
        cfg = self.cfg
        kind = "context-aware prompting" if cfg.use_text else "the CLIP + FPN baseline"
        lines = [f"# {repo_id.split('/')[-1]}", "",
                 f"DenseCLIP segmentor `{cfg.name}` (CLIP `{cfg.clip_model}`, {cfg.num_classes} classes, "
                 f"{kind}; DenseCLIP, Rao et al., CVPR 2022).", "", "```python", "import denseclip",
                 f'model = denseclip.load_checkpoint("{repo_id}")',
                 'r = denseclip.predict(model, "photo.jpg")', "```", ""]
        if metrics:
            values = [f"{100 * metrics.get(k, float('nan')):.2f}" for k in ("aAcc", "mIoU", "mAcc")]
            test = cfg.test
            lines += ["## Validation", "", "| aAcc | mIoU | mAcc |", "| --- | --- | --- |",
                      "| " + " | ".join(values) + " |", "", f"Test pipeline: {test.mode}, crop {test.crop}, "
                      f"stride {test.stride}, short side {test.short_side}.", ""]
        return "\n".join([*lines, "Classes: " + ", ".join(cfg.class_names), ""])


def build_model(preset_or_config: str | DenseCLIPConfig = "denseclip-rn50-ade20k",
                pretrained: bool | str | None = True, class_names: Sequence[str] | None = None,
                **changes) -> DenseCLIP:
    """Build a DenseCLIP model from a preset name or a DenseCLIPConfig (in train mode, on CPU).

    pretrained=True loads the config's CLIP weights (`clip_pretrained`, e.g. OpenAI's) and, for timm
    backbones, timm's ImageNet weights; False/None builds random weights (tests, offline); a string is an
    open_clip tag or a local CLIP weights file. `class_names` and `changes` replace config fields.
    """
    cfg = resolve(preset_or_config, DenseCLIPConfig, class_names=class_names, **changes)
    if not pretrained and cfg.backbone != "clip":
        cfg = cfg.replace(backbone_pretrained=False)
    return build(cfg, assemble, pretrained)


def assemble(cfg: DenseCLIPConfig, clip_model: nn.Module | None) -> DenseCLIP:
    """The parts a config describes, around a given open_clip model (its towers are adopted, not copied)."""
    if cfg.backbone == "clip":
        encoder = encoder_from_clip(clip_model.visual, cfg.input_resolution, embeddings=cfg.use_text,
                                    out_indices=cfg.vit_out_indices, official_cls=cfg.vit_official_cls,
                                    drop_path_rate=cfg.drop_path_rate)  # the ViT options skip ResNets
    else:
        text_dim = clip_model.text_projection.shape[-1] if cfg.use_text else None
        encoder = TimmEncoder(cfg.backbone, text_dim, pretrained=cfg.backbone_pretrained)
    prompting = prompting_for(clip_model, cfg, encoder.embed_dim)
    channels = list(encoder.feature_channels)
    if prompting is not None:
        if not 0 <= cfg.score_concat_index < len(channels):
            raise ValueError(f"score_concat_index {cfg.score_concat_index} must be in [0, {len(channels)})")
        channels[cfg.score_concat_index] += cfg.num_classes
    head = FPNHead([cfg.neck_channels] * 4, cfg.head_channels, cfg.num_classes, encoder.feature_strides,
                   cfg.head_dropout)
    return DenseCLIP(encoder, prompting, FPN(channels, cfg.neck_channels), head, cfg)


def load_checkpoint(path_or_repo: str | Path, config: str | DenseCLIPConfig | None = None,
                    class_names: Sequence[str] | None = None,
                    device: str | torch.device = "cpu") -> DenseCLIP:
    """A DenseCLIP segmentor in eval mode from:

    - our `.safetensors` file or a folder holding `model.safetensors` (+ `config.json`),
    - a Hugging Face Hub repo id holding those files ("user/denseclip-rn50-ade20k"),
    - the authors' released mmcv checkpoints (`.pth`, read with weights_only=True; the architecture is
      read off the tensors, class names from meta["CLASSES"]).
    `config` (a preset name or a DenseCLIPConfig) replaces the stored config, or gives what the authors'
    tensors cannot tell (test pipeline, ViT taps); `class_names` override the stored names.
    Detection checkpoints load with `denseclip.load_detector`.
    """
    return load_model(path_or_repo, DenseCLIPConfig, assemble, config, class_names, device)
