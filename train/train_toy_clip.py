"""Train the toy micro-CLIP (`denseclip.toy`) contrastively, as CLIP was, on its synthetic world.

    python -m train.train_toy_clip                 # the default recipe -> denseclip/assets (bf16, shipped)
    python -m train.train_toy_clip --steps 300     # another recipe -> the cache (DENSECLIP_CACHE)

Random crops of synthetic scenes (`denseclip.data.synthetic`: sky, tree, road, person, car) are paired
with captions that name the classes in the crop ("a photo of the road and car."); crops that show the same
classes mean the same, so they count as positives of each other. Nothing in the loss is dense and no loss
sees a pixel label; the attention pool's value path still puts every position in the text space (see
`denseclip.toy`). Seeded and, on the recipe's one thread, deterministic on one machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from denseclip.checkpoints import atomic_path
from denseclip.data.synthetic import make_sample
from denseclip.data.transforms import normalize_image
from denseclip.toy import (
    ASSETS,
    CAPTION_TEMPLATES,
    TOY_CLASSES,
    TOY_CLIP_ARCH,
    TOY_CLIP_NAME,
    ToyRecipe,
    cache_dir,
)


def tokenizer():
    """CLIP's BPE tokenizer at the micro-CLIP's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=TOY_CLIP_ARCH["text_cfg"]["context_length"])


def new_clip() -> nn.Module:
    """The micro-CLIP's open_clip architecture with random weights (ResNet image tower, 24-token text)."""
    from denseclip.clip import create_clip

    return create_clip(TOY_CLIP_NAME, None, arch=TOY_CLIP_ARCH, quick_gelu=True)


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


def save_toy_clip(clip: nn.Module, info: dict, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write trained weights (in `dtype`) with what training reported as metadata, atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.to(dtype).contiguous() for k, v in clip.state_dict().items()}, str(tmp),
                  metadata={"toy_clip": json.dumps(info)})
    return path


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m train.train_toy_clip", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(ToyRecipe):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    recipe = ToyRecipe(**{k: v for k, v in vars(p.parse_args(argv)).items()})
    clip, info = train_toy_clip(recipe)
    name = f"{TOY_CLIP_NAME}-{recipe.key()}.safetensors"
    shipped = recipe == ToyRecipe()  # the default recipe's weights ship, in bfloat16
    path = save_toy_clip(clip, info, (ASSETS if shipped else cache_dir()) / name,
                         torch.bfloat16 if shipped else torch.float32)
    print(json.dumps(info), path)
    return path


if __name__ == "__main__":
    main()
