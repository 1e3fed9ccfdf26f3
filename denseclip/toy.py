"""A micro-CLIP that has learned pixel-text matching at toy scale: the tutorials' model when no real
CLIP weights can be downloaded (offline, CI), the app's offline default, and a small real model for tests.

    import denseclip.toy as toy
    clip = toy.toy_clip()                 # the shipped weights (bfloat16 in denseclip/assets, 7 MB)
    path = toy.toy_clip_file()            # its weights file: clip_pretrained=str(path) in a model config
    cfg = toy.toy_config(prompt={"num_contexts": 4})   # a DenseCLIPConfig around it (5 classes, 128 px)

The world is the synthetic task of `denseclip.data.synthetic` (sky, tree, road, person, car, each with its
own colour, texture and shape). This open_clip CLIP (a ResNet image tower: the attention pool, the value
path and DenseCLIP all apply) was trained contrastively on crops of those scenes and captions naming their
classes (`python -m train.train_toy_clip`, about a minute; the shipped file is its output). No loss saw a
pixel label, yet, as MaskCLIP found for real CLIP, the attention pool's value path c_proj(v_proj(x_i)) puts
every position in the text space (zero-shot mIoU 84.4 on held-out scenes; the full pool with every
position a query: 4.2). Other recipes' weights are cached in `DENSECLIP_CACHE` (~/.cache/denseclip).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from .config import TINY_CLASSES, DenseCLIPConfig, TestConfig

CACHE_ENV = "DENSECLIP_CACHE"  # folder for the toy CLIP's weights (default ~/.cache/denseclip)
ASSETS = Path(__file__).parent / "assets"  # the default recipe's weights, shipped (bfloat16, 7 MB)
TOY_CLIP_NAME = "toy-clip"
TOY_CLASSES = TINY_CLASSES  # sky, tree, road, person, car
TOY_CLIP_ARCH = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 96, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
# Sentences the captions are written in (the library's "simple" prompt set, with a list of names).
CAPTION_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a cropped photo of the {}.",
                     "there is a {} in the scene.", "a close-up photo of the {}.")


@dataclass(frozen=True)
class ToyRecipe:
    """How the micro-CLIP is trained; every field is part of the cache key."""

    seed: int = 0
    steps: int = 150  # contrastive steps
    batch: int = 64  # image-caption pairs per step
    lr: float = 2e-3  # AdamW, torch's one-cycle schedule (5% warm-up, then cosine decay)
    scenes: int = 256  # distinct synthetic scenes the crops are cut from
    min_scene: int = 96  # scene sides (square): a crop of a large scene shows one or two classes,
    max_scene: int = 320  # of a small one the whole scene
    min_area: float = 0.05  # a class is named in the caption if it covers this fraction of the crop
    threads: int = 1  # torch threads while training: the sums' order, so the weights, depend on it

    def key(self) -> str:
        text = json.dumps({"recipe": asdict(self), "arch": TOY_CLIP_ARCH, "captions": CAPTION_TEMPLATES,
                           "classes": TOY_CLASSES, "version": 2}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """DENSECLIP_CACHE, else ~/.cache/denseclip (XDG_CACHE_HOME respected)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "denseclip"


def toy_clip_file(recipe: ToyRecipe = ToyRecipe()) -> Path:
    """The micro-CLIP's weights file (safetensors, open_clip key names): shipped with the package for the
    default recipe, else written into the cache by `python -m train.train_toy_clip`."""
    name = f"{TOY_CLIP_NAME}-{recipe.key()}.safetensors"
    for path in (ASSETS / name, cache_dir() / name):
        if path.is_file():
            return path
    raise FileNotFoundError(f"no weights for {recipe} ({name} is in neither {ASSETS} nor {cache_dir()}): "
                            "train them with python -m train.train_toy_clip (its options are the recipe's)")


def toy_clip_info(path: str | Path | None = None) -> dict:
    """What training reported for a weights file (recipe, seconds, losses, retrieval accuracy)."""
    from safetensors import safe_open

    with safe_open(str(path or toy_clip_file()), framework="pt") as f:
        return json.loads(f.metadata()["toy_clip"])


def toy_clip(recipe: ToyRecipe = ToyRecipe()) -> nn.Module:
    """The trained micro-CLIP (open_clip CLIP, float32, eval mode, CPU)."""
    from .clip import create_clip

    return create_clip(TOY_CLIP_NAME, str(toy_clip_file(recipe)), arch=TOY_CLIP_ARCH)


def toy_config(recipe: ToyRecipe = ToyRecipe(), **changes) -> DenseCLIPConfig:
    """A small DenseCLIP config on the trained micro-CLIP (the `denseclip-tiny-rn` preset's prompting, the 5
    synthetic classes, 128 px); `changes` replace fields (`prompt={...}`, `aux_loss_weight=0.0`)."""
    from .config import get_preset

    cfg = get_preset("denseclip-tiny-rn").replace(
        name="denseclip-toy", clip_model=TOY_CLIP_NAME, clip_arch=TOY_CLIP_ARCH,
        clip_pretrained=str(toy_clip_file(recipe)), input_resolution=128, neck_channels=32,
        head_channels=32,
        test=TestConfig(mode="whole", crop=128, stride=96, short_side=128, max_long_side=512))
    return cfg.replace(**changes) if changes else cfg

