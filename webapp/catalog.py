"""The models the app offers: one list of training-free (zero-shot) models, the tiny test models, and the
operator's DenseCLIP checkpoints. A new zero-shot method is one more `ZeroShotModel` in ZERO_SHOT_MODELS.

The first zero-shot entry is the default: CLIP ViT-B/16 with ClearCLIP's query-query attention in the
last block (no residual, no FFN), which localises far better than ResNet value paths (MaskCLIP) in the
training-free segmentation tables of ClearCLIP (Lan et al., ECCV 2024) and SCLIP (Wang et al., 2024).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PRETRAINED = "openai"  # the zero-shot models' CLIP weights (open_clip tag)
TINY_ZS = "Tiny zero-shot CLIP (untrained)"
TINY_DC = "Tiny DenseCLIP (untrained)"


@dataclass(frozen=True)
class ZeroShotModel:
    label: str  # what visitors pick
    clip: str  # open_clip model name
    mode: str  # ZeroShotSegmenter dense_mode
    method: str  # the training-free method and its paper (README, model info)


ZERO_SHOT_MODELS: tuple[ZeroShotModel, ...] = (
    ZeroShotModel("CLIP ViT-B/16 · ClearCLIP", "ViT-B-16", "qq", "ClearCLIP (Lan et al., ECCV 2024)"),
    ZeroShotModel("CLIP RN50 · MaskCLIP", "RN50", "value", "MaskCLIP (Zhou et al., ECCV 2022)"),
    ZeroShotModel("CLIP RN101 · MaskCLIP", "RN101", "value", "MaskCLIP (Zhou et al., ECCV 2022)"),
)


@dataclass(frozen=True)
class ModelSpec:
    label: str
    kind: str  # "zeroshot" | "denseclip"
    source: str  # open_clip model name, checkpoint path, Hub repo id, or "tiny"
    mode: str | None = None  # zero-shot dense mode (None: the segmenter's default)
    untrained: bool = False
    from_hub: bool = False  # a Hub repo id typed by a visitor (downloaded by the app, never a server path)

    @property
    def what(self) -> str:
        """What to install for this model, in an operator's words."""
        if self.kind == "zeroshot" and self.source != "tiny":
            return f"OpenAI CLIP {self.source} weights"
        return f"the checkpoint {self.source}"


def zero_shot_specs() -> list[ModelSpec]:
    return [ModelSpec(m.label, "zeroshot", m.clip, m.mode) for m in ZERO_SHOT_MODELS]


def default_specs(tiny: bool, checkpoints: Sequence[str] = ()) -> list[ModelSpec]:
    """The model list: the tiny untrained models first in --tiny mode, then the operator's checkpoints,
    then the zero-shot models. The first entry is the default."""
    specs = []
    if tiny:
        specs += [ModelSpec(TINY_ZS, "zeroshot", "tiny", untrained=True),
                  ModelSpec(TINY_DC, "denseclip", "tiny", untrained=True)]
    for ckpt in checkpoints:
        name = Path(str(ckpt).rstrip("/")).name or str(ckpt)
        specs.append(ModelSpec(f"DenseCLIP: {name}", "denseclip", str(ckpt)))
    return specs + zero_shot_specs()


def hub_weights(clip: str, tag: str = PRETRAINED) -> tuple[str, str]:
    """(Hub repo, file) of open_clip's weights for (model, tag): what a Space preloads for it."""
    import open_clip

    hub = open_clip.get_pretrained_cfg(clip, tag).get("hf_hub", "")
    if not hub:
        raise ValueError(f"open_clip has no Hub copy of {clip}/{tag}")
    if hub.endswith("/"):  # a repo: open_clip (and denseclip) look for its safetensors file first
        return hub.rstrip("/"), "open_clip_model.safetensors"
    repo, filename = hub.rsplit("/", 1)
    return repo, filename


def load_examples(folder: Path) -> list[dict]:
    """The example photos listed in `folder`/examples.json (file -> classes, credit, licence), in order."""
    import json

    index = folder / "examples.json"
    if not index.is_file():
        return []
    entries = json.loads(index.read_text("utf-8"))
    return [{"path": str(folder / name), **entry} for name, entry in entries.items()
            if (folder / name).is_file()]
