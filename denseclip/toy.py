"""A micro-CLIP that has learned pixel-text matching at toy scale: the tutorials' model when no real
CLIP weights can be downloaded (offline, CI), and a small real model for tests.

    import denseclip.toy as toy
    clip = toy.toy_clip()                 # the shipped weights (other recipes: trained once, then cached)
    path = toy.toy_clip_file()            # its weights file: clip_pretrained=str(path) in a model config
    cfg = toy.toy_config(prompt={"num_contexts": 4})   # a DenseCLIPConfig around it (5 classes, 128 px)

The world is the synthetic shapes task of `denseclip.data.synthetic` (sky, tree, road, person, car: each
class with its own colour, texture and shape). An open_clip CLIP with a ResNet image tower (so the
attention pool, the value path and DenseCLIP all apply) is trained contrastively, as CLIP was, on random
crops of those scenes paired with captions that name the classes in the crop ("a photo of the road and
car."). Crops that show the same classes mean the same, so they count as positives of each other.

Nothing in the loss is dense, and no loss ever sees a pixel label. Yet, as MaskCLIP (Zhou et al. 2022)
found for real CLIP, the attention pool's *value path* c_proj(v_proj(x_i)) then puts every position in the
text space (zero-shot mIoU about 84 on held-out synthetic scenes, measured when this recipe was chosen),
while the attention pool run with every position as a query does not (about 4).

Training is seeded and, on one thread (the recipe's), deterministic on one machine. The default recipe's
weights ship with the package in bfloat16 (`denseclip/assets/`, 7 MB; `python -m denseclip.toy` trains
and writes them again, a few minutes); other recipes are trained on first use and cached as safetensors
under `DENSECLIP_CACHE` (default ~/.cache/denseclip) in a file named after the recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import TINY_CLASSES, DenseCLIPConfig, TestConfig
from .data.synthetic import make_sample
from .data.transforms import normalize_image

CACHE_ENV = "DENSECLIP_CACHE"  # folder for the toy CLIP's weights (default ~/.cache/denseclip)
ASSETS = Path(__file__).parent / "assets"  # the default recipe's weights, shipped (bfloat16, ~6 MB)
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


# ---------------------------------------------------------------------------------------------- data
def listing(names: list[str]) -> str:
    """'sky', 'sky and car', 'sky, road and car'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def caption(names: list[str], rng: np.random.Generator) -> str:
    """'a photo of the sky, road and car.': the names in random order in a random caption sentence."""
    names = [names[i] for i in rng.permutation(len(names))]
    return CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(listing(names))


def make_scenes(recipe: ToyRecipe) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The scene pool: (image (3, S, S) uint8, label (S, S) int64) of the synthetic task (sample offset 2e6),
    S from min_scene to max_scene: the shapes scale with the scene, colours and textures do not."""
    rng = np.random.default_rng([recipe.seed, 0])
    sides = rng.integers(recipe.min_scene, recipe.max_scene + 1, size=recipe.scenes)
    scenes = []
    for i, side in enumerate(sides):
        image, label = make_sample(2 * 10**6 + i, recipe.seed, (int(side), int(side)))
        scenes.append((torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(label)))
    return scenes


def crop_batch(scenes: list[tuple[torch.Tensor, torch.Tensor]], recipe: ToyRecipe, rng: np.random.Generator,
               size: int) -> tuple[torch.Tensor, list[frozenset], list[str]]:
    """`recipe.batch` random size x size crops (flipped half the time), CLIP-normalised: images
    (B, 3, size, size), the set of classes each shows, and a caption of each."""
    crops, sets, texts = [], [], []
    for _ in range(recipe.batch):
        image, label = scenes[int(rng.integers(len(scenes)))]
        y, x = (int(rng.integers(0, n - size + 1)) for n in label.shape)
        crop = image[:, y:y + size, x:x + size]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        area = torch.bincount(label[y:y + size, x:x + size].flatten(), minlength=len(TOY_CLASSES))
        present = [name for c, name in enumerate(TOY_CLASSES) if area[c] >= recipe.min_area * size * size]
        crops.append(crop)
        sets.append(frozenset(present))
        texts.append(caption(present, rng))
    return normalize_image(torch.stack(crops).float()), sets, texts


def tokenizer():
    """CLIP's BPE tokenizer at the micro-CLIP's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=TOY_CLIP_ARCH["text_cfg"]["context_length"])


# -------------------------------------------------------------------------------------------- training
def new_clip() -> nn.Module:
    """The micro-CLIP's open_clip architecture with random weights (ResNet image tower, 24-token text)."""
    from .clip import create_clip

    return create_clip(TOY_CLIP_NAME, None, arch=TOY_CLIP_ARCH, quick_gelu=True)


def contrastive_loss(clip: nn.Module, images: torch.Tensor, tokens: torch.Tensor,
                     sets: list[frozenset]) -> torch.Tensor:
    """CLIP's symmetric cross-entropy; pairs whose crops show the same classes are all positives."""
    img = F.normalize(clip.encode_image(images), dim=-1)
    txt = F.normalize(clip.encode_text(tokens), dim=-1)
    logits = clip.logit_scale.exp().clamp(max=100) * img @ txt.T
    same = torch.tensor([[a == b for b in sets] for a in sets], dtype=torch.float32)
    targets = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def train_toy_clip(recipe: ToyRecipe = ToyRecipe(), progress: bool = True) -> tuple[nn.Module, dict]:
    """Train the micro-CLIP from scratch (no cache); returns it in eval mode and a summary dict."""
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        return _train(recipe, progress)
    finally:
        torch.set_num_threads(threads)


def _train(recipe: ToyRecipe, progress: bool) -> tuple[nn.Module, dict]:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng([recipe.seed, 1])
    clip = new_clip().train()
    size = TOY_CLIP_ARCH["vision_cfg"]["image_size"]
    scenes, tok = make_scenes(recipe), tokenizer()
    opt = torch.optim.AdamW(clip.parameters(), lr=recipe.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=recipe.steps, pct_start=0.05,
                                                cycle_momentum=False)  # warm-up, then cosine decay
    losses = []
    bar = tqdm(range(recipe.steps), desc="training the toy micro-CLIP", disable=not progress, mininterval=1.0)
    for _ in bar:
        images, sets, texts = crop_batch(scenes, recipe, rng, size)
        loss = contrastive_loss(clip, images, tok(texts), sets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", refresh=False)
    clip.eval()
    info = {"recipe": asdict(recipe), "key": recipe.key(), "seconds": round(time.perf_counter() - t0, 1),
            "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:]))}
    info.update(retrieval_accuracy(clip, seed=recipe.seed))
    return clip, info


@torch.no_grad()
def retrieval_accuracy(clip: nn.Module, n: int = 256, seed: int = 0) -> dict:
    """Held-out crops (other scenes than training's): how often the caption nearest to a crop names exactly
    the classes it shows, among one caption per class set seen ("a photo of the car and sky.").

    Returns {"retrieval_acc", "retrieval_chance"}: chance is always answering the most frequent set."""
    recipe = ToyRecipe(seed=seed + 1000, batch=n, scenes=48)  # other scenes: a different seed
    images, sets, _ = crop_batch(make_scenes(recipe), recipe, np.random.default_rng([seed, 2]),
                                 TOY_CLIP_ARCH["vision_cfg"]["image_size"])
    options = sorted({s for s in sets}, key=lambda s: sorted(s))
    texts = [CAPTION_TEMPLATES[1].format(listing(sorted(s))) for s in options]
    was = clip.training
    clip.eval()
    img = F.normalize(clip.encode_image(images), dim=-1)
    txt = F.normalize(clip.encode_text(tokenizer()(texts)), dim=-1)
    clip.train(was)
    pred = (img @ txt.T).argmax(1)
    acc = float(np.mean([options[int(p)] == s for p, s in zip(pred, sets)]))
    chance = max(sets.count(s) for s in options) / len(sets)
    return {"retrieval_acc": acc, "retrieval_chance": chance, "retrieval_sets": len(options)}


# ----------------------------------------------------------------------------------------------- cache
def toy_clip_file(recipe: ToyRecipe = ToyRecipe(), progress: bool = True) -> Path:
    """The micro-CLIP's weights file (safetensors, open_clip key names): shipped with the package for the
    default recipe, else from the cache, else trained now and cached."""
    name = f"{TOY_CLIP_NAME}-{recipe.key()}.safetensors"
    for path in (ASSETS / name, cache_dir() / name):
        if path.is_file():
            return path
    return save_toy_clip(*train_toy_clip(recipe, progress), cache_dir() / name)


def save_toy_clip(clip: nn.Module, info: dict, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write trained weights (in `dtype`) with what training reported as metadata, atomically."""
    from safetensors.torch import save_file

    from .checkpoints import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.to(dtype).contiguous() for k, v in clip.state_dict().items()}, str(tmp),
                  metadata={"toy_clip": json.dumps(info)})
    return path


def toy_clip_info(path: str | Path | None = None) -> dict:
    """What training the cached micro-CLIP reported (recipe, seconds, losses, retrieval accuracy)."""
    from safetensors import safe_open

    with safe_open(str(path or toy_clip_file()), framework="pt") as f:
        return json.loads(f.metadata()["toy_clip"])


def toy_clip(recipe: ToyRecipe = ToyRecipe(), progress: bool = True) -> nn.Module:
    """The trained micro-CLIP (open_clip CLIP, eval mode, CPU): from the cache, or trained and cached now."""
    from .clip import create_clip

    return create_clip(TOY_CLIP_NAME, str(toy_clip_file(recipe, progress)), arch=TOY_CLIP_ARCH)


def toy_config(recipe: ToyRecipe = ToyRecipe(), progress: bool = True, **changes) -> DenseCLIPConfig:
    """A small DenseCLIP config on the trained micro-CLIP (the `denseclip-tiny-rn` preset's prompting, the 5
    synthetic classes, 128 px); `changes` replace fields (`prompt={...}`, `aux_loss_weight=0.0`)."""
    from .config import get_preset

    cfg = get_preset("denseclip-tiny-rn").replace(
        name="denseclip-toy", clip_model=TOY_CLIP_NAME, clip_arch=TOY_CLIP_ARCH,
        clip_pretrained=str(toy_clip_file(recipe, progress)), input_resolution=128, neck_channels=32,
        head_channels=32,
        test=TestConfig(mode="whole", crop=128, stride=96, short_side=128, max_long_side=512))
    return cfg.replace(**changes) if changes else cfg


if __name__ == "__main__":  # python -m denseclip.toy: train the default recipe and write the shipped file
    clip, info = train_toy_clip()
    print(info, save_toy_clip(clip, info, ASSETS / f"{TOY_CLIP_NAME}-{info['key']}.safetensors",
                              torch.bfloat16))
