"""The models the app offers: one list of training-free (zero-shot) models, the tiny test models, the
operator's DenseCLIP checkpoints and detectors. A new zero-shot method is one more `ZeroShotModel` in
ZERO_SHOT_MODELS (a `method=` of denseclip.ZeroShotSegmenter; `denseclip.zeroshot.describe_methods()`).

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
TINY_ZS = "Tiny zero-shot CLIP (untrained)"
TINY_DC = "Tiny DenseCLIP (untrained)"
TINY_DETECTORS = {  # label -> denseclip preset (random weights)
    "Tiny DenseCLIP RetinaNet (untrained)": "denseclip-retinanet-tiny",
    "Tiny DenseCLIP Mask R-CNN (untrained)": "denseclip-maskrcnn-tiny",
}


@dataclass(frozen=True)
class ZeroShotModel:
    label: str  # what visitors pick
    clip: str  # open_clip model name
    method: str  # ZeroShotSegmenter method= (denseclip.zeroshot.METHODS)
    paper: str  # the training-free method's paper (model info)


ZERO_SHOT_MODELS: tuple[ZeroShotModel, ...] = (
    ZeroShotModel("CLIP ViT-B/16 · NACLIP", "ViT-B-16", "naclip", "NACLIP (Hajimiri et al., WACV 2025)"),
    ZeroShotModel("CLIP ViT-B/16 · ClearCLIP", "ViT-B-16", "clearclip", "ClearCLIP (Lan et al., ECCV 2024)"),
    ZeroShotModel("CLIP RN50 · MaskCLIP", "RN50", "maskclip", "MaskCLIP (Zhou et al., ECCV 2022)"),
    ZeroShotModel("CLIP RN101 · MaskCLIP", "RN101", "maskclip", "MaskCLIP (Zhou et al., ECCV 2022)"),
)


@dataclass(frozen=True)
class ModelSpec:
    label: str
    kind: str  # "zeroshot" | "denseclip" (a segmentation checkpoint) | "detector"
    source: str  # open_clip model name, checkpoint path, Hub repo id, "tiny" or a tiny detector preset
    method: str | None = None  # zero-shot method (None: the segmenter's default)
    untrained: bool = False
    from_hub: bool = False  # a Hub repo id typed by a visitor (downloaded by the app, never a server path)

    @property
    def what(self) -> str:
        """What to install for this model, in an operator's words."""
        if self.kind == "zeroshot" and self.source != "tiny":
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


def zero_shot_specs() -> list[ModelSpec]:
    return [ModelSpec(m.label, "zeroshot", m.clip, m.method) for m in ZERO_SHOT_MODELS]


def default_specs(tiny: bool, checkpoints: Sequence[str] = ()) -> list[ModelSpec]:
    """The model list: the tiny untrained models first in --tiny mode, then the operator's checkpoints,
    then the zero-shot models. The first entry is the default."""
    specs = []
    if tiny:
        specs += [ModelSpec(TINY_ZS, "zeroshot", "tiny", untrained=True),
                  ModelSpec(TINY_DC, "denseclip", "tiny", untrained=True)]
    checkpoints = _distinct(checkpoints)
    for ckpt, name in zip(checkpoints, short_names(checkpoints)):
        specs.append(ModelSpec(f"DenseCLIP: {name}", "denseclip", ckpt))
    return specs + zero_shot_specs()


def detector_specs(tiny: bool, detectors: Sequence[str] = ()) -> list[ModelSpec]:
    """The detector list: the operator's detectors (`--detector`), then in --tiny mode the two tiny
    untrained ones. The first entry is the default; empty when the server offers no detector."""
    detectors = _distinct(detectors)
    specs = [ModelSpec(name, "detector", path) for path, name in zip(detectors, short_names(detectors))]
    if tiny:
        specs += [ModelSpec(label, "detector", preset, untrained=True)
                  for label, preset in TINY_DETECTORS.items()]
    return specs


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
