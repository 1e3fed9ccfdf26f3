"""The models the app offers: one list of training-free (zero-shot) models, the toy model that serves
when no CLIP weights are on the server, the tiny test models, the operator's DenseCLIP checkpoints and
detectors. A new zero-shot method is one more `ZeroShotModel` in ZERO_SHOT_MODELS (a `method=` of
denseclip.ZeroShotSegmenter; `denseclip.zeroshot.describe_methods()`).

Methods change only the last block of a CLIP tower, so every entry on the same CLIP shares one loaded
model (`ModelSpec.backbone`): the method is chosen per request.

The first zero-shot entry is the default: CLIP ViT-B/16 with NACLIP's last block (key-key attention plus
a Gaussian neighbourhood bias, no residual, no FFN; Hajimiri et al., WACV 2025), the best maps from CLIP
alone at about the cost of encode_image. Published mean mIoU over the 8 training-free benchmarks with
ViT-B/16, as each paper reports it (not measured here): NACLIP 39.4, SCLIP 38.2, ClearCLIP 38.1,
MaskCLIP about 30. ClearCLIP stays in the list for comparison; the ResNets run MaskCLIP's value path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PRETRAINED = "openai"  # the zero-shot models' CLIP weights (open_clip tag)
TOY = "toy"  # ModelSpec.source of the toy micro-CLIP (denseclip.toy), which has its own weights
TINY_ZS = "Tiny zero-shot CLIP (untrained)"
TINY_DC = "Tiny DenseCLIP (untrained)"
TINY_DETECTORS = {  # label -> denseclip preset (random weights)
    "Tiny RetinaNet (untrained)": "denseclip-retinanet-tiny",
    "Tiny Mask R-CNN (untrained)": "denseclip-maskrcnn-tiny",
}


@dataclass(frozen=True)
class ZeroShotModel:
    label: str  # what visitors pick
    clip: str  # open_clip model name
    method: str  # ZeroShotSegmenter method= (denseclip.zeroshot.METHODS)


ZERO_SHOT_MODELS: tuple[ZeroShotModel, ...] = (
    ZeroShotModel("CLIP ViT-B/16 · NACLIP", "ViT-B-16", "naclip"),
    ZeroShotModel("CLIP ViT-B/16 · ClearCLIP", "ViT-B-16", "clearclip"),
    ZeroShotModel("CLIP RN50 · MaskCLIP", "RN50", "maskclip"),
    ZeroShotModel("CLIP RN101 · MaskCLIP", "RN101", "maskclip"),
)
TOY_MODEL = ZeroShotModel("Offline demo model", TOY, "maskclip")
# The working image's short side per CLIP where it is not the library's 448: ViT-B/16 at 336, the short side
# NACLIP and SCLIP evaluate at (21 x 21 patches), answers in half the time (measured 0.25 vs 0.53 s, bf16).
WORKING_SIZE = {"ViT-B-16": 336}


@dataclass(frozen=True)
class ModelSpec:
    label: str
    kind: str  # "zeroshot" | "denseclip" (a segmentation checkpoint) | "detector"
    source: str  # open_clip model name, TOY, "tiny", a checkpoint path / Hub repo id, a tiny detector preset
    method: str | None = None  # zero-shot method (None: the segmenter's default)
    pretrained: str | None = PRETRAINED  # the weights, as the library says it: None = random weights
    from_hub: bool = False  # a Hub repo id typed by a visitor (downloaded by the app, never a server path)

    @property
    def backbone(self) -> tuple[str, str, str | None]:
        """What is loaded for this entry: one model serves every entry with the same backbone."""
        return self.kind, self.source, self.pretrained

    @property
    def what(self) -> str:
        """What to install for this model, in an operator's words."""
        if self.kind == "zeroshot" and self.pretrained == PRETRAINED:
            return f"OpenAI CLIP {self.source} weights"
        return f"the checkpoint {self.source}"


def short_names(sources: Sequence[str]) -> list[str]:
    """A name for each checkpoint path or Hub repo id: its last part, with as many parent folders as it
    takes to tell it from the others ("runA/final", "runB/final"; "final" alone when it is the only one)."""
    parts = [Path(str(s).rstrip("/")).parts or (str(s),) for s in sources]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    for i, n in enumerate(names):  # spelt differently, same tail ("a//b", "a/b"): numbered
        seen[n] = seen.get(n, 0) + 1
        names[i] = n if seen[n] == 1 else f"{n} ({seen[n]})"
    return names


def _distinct(sources: Sequence[str]) -> list[str]:
    """The operator's list without repeats (the same path given twice is one model)."""
    return list(dict.fromkeys(str(s) for s in sources))


def zero_shot_spec(model: ZeroShotModel) -> ModelSpec:
    weights = TOY if model.clip == TOY else PRETRAINED
    return ModelSpec(model.label, "zeroshot", model.clip, model.method, weights)


def default_specs(tiny: bool, checkpoints: Sequence[str] = (), toy: bool = False) -> list[ModelSpec]:
    """The model list: the tiny untrained models first in --tiny mode, then the operator's checkpoints,
    then the zero-shot models, then (`toy`) the toy model. The first entry is the default."""
    specs = []
    if tiny:
        specs += [ModelSpec(TINY_ZS, "zeroshot", "tiny", pretrained=None),
                  ModelSpec(TINY_DC, "denseclip", "tiny", pretrained=None)]
    checkpoints = _distinct(checkpoints)
    for ckpt, name in zip(checkpoints, short_names(checkpoints)):
        specs.append(ModelSpec(f"DenseCLIP: {name}", "denseclip", ckpt, pretrained=ckpt))
    specs += [zero_shot_spec(m) for m in ZERO_SHOT_MODELS]
    return specs + ([zero_shot_spec(TOY_MODEL)] if toy else [])


def detector_specs(tiny: bool, detectors: Sequence[str] = ()) -> list[ModelSpec]:
    """The detector list: the operator's detectors (`--detector`), then in --tiny mode the two tiny
    untrained ones. The first entry is the default; empty when the server offers no detector."""
    detectors = _distinct(detectors)
    specs = [ModelSpec(name, "detector", path, pretrained=path)
             for path, name in zip(detectors, short_names(detectors))]
    if tiny:
        specs += [ModelSpec(label, "detector", preset, pretrained=None)
                  for label, preset in TINY_DETECTORS.items()]
    return specs


def preload_entries() -> list[str]:
    """The README front matter's `preload_from_hub` lines: every offered CLIP's weights file."""
    from denseclip.clip import hub_weights

    entries = []
    for clip in dict.fromkeys(m.clip for m in ZERO_SHOT_MODELS):
        repo, files = hub_weights(clip, PRETRAINED)
        entries.append(f"{repo} {files[0]}")
    return entries


def weights_on_disk(spec: ModelSpec) -> bool:
    """Whether a zero-shot model's CLIP weights are on this machine (DENSECLIP_WEIGHTS_DIR or the Hugging
    Face cache), without building anything or asking the Hub. Other models: True (their files are the
    operator's business, checked when loaded)."""
    if spec.kind != "zeroshot" or spec.pretrained != PRETRAINED:
        return True
    from huggingface_hub import try_to_load_from_cache

    from denseclip import clip

    if clip.weights_dir_file(spec.source, PRETRAINED):
        return True
    repo, files = clip.hub_weights(spec.source, PRETRAINED)
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
