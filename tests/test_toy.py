"""The toy micro-CLIP of the tutorials: its data, the cache, seeded training, and that it learns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from denseclip import toy

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: more threads only contend on CI cores

# A few steps on a few scenes: enough to check the machinery in seconds (not to learn anything).
SHORT = toy.ToyRecipe(steps=3, batch=8, scenes=6)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(toy.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_captions_name_each_class_once_in_a_caption_sentence():
    rng = np.random.default_rng(0)
    for names in (["sky"], ["sky", "car"], ["tree", "road", "person", "car"]):
        text = toy.caption(names, rng)
        assert any(text.startswith(t.split("{}")[0]) for t in toy.CAPTION_TEMPLATES)
        words = [w.strip(",.") for w in text.split()]
        assert sorted(w for w in words if w in toy.TOY_CLASSES) == sorted(names)


def test_crop_batch_images_and_class_sets():
    recipe = dataclasses.replace(SHORT, batch=16)
    scenes = toy.make_scenes(recipe)
    assert len(scenes) == 6
    for image, label in scenes:  # square scenes of several sizes
        assert image.dtype == torch.uint8 and image.shape[1:] == label.shape
        assert recipe.min_scene <= label.shape[0] == label.shape[1] <= recipe.max_scene
    images, sets, texts = toy.crop_batch(scenes, recipe, np.random.default_rng(0), 64)
    assert images.shape == (16, 3, 64, 64) and images.dtype == torch.float32
    assert abs(float(images.mean())) < 1 and float(images.std()) > 0.5  # CLIP-normalised pixels in [0, 255]
    assert len(sets) == len(texts) == 16
    for s, t in zip(sets, texts):
        assert s and s <= set(toy.TOY_CLASSES)
        assert all(name in t for name in s)


def test_contrastive_loss_is_clips_with_equal_class_sets_as_positives():
    import torch.nn.functional as F

    torch.manual_seed(0)
    clip = toy.new_clip().eval()
    recipe = dataclasses.replace(SHORT, batch=6)
    images, _, texts = toy.crop_batch(toy.make_scenes(recipe), recipe, np.random.default_rng(0),
                                      toy.TOY_CLIP_ARCH["vision_cfg"]["image_size"])
    tokens = toy.tokenizer()(texts)
    with torch.no_grad():
        img = F.normalize(clip.encode_image(images), dim=-1)
        txt = F.normalize(clip.encode_text(tokens), dim=-1)
        logits = clip.logit_scale.exp() * img @ txt.T
        distinct = [frozenset({str(i)}) for i in range(6)]  # every pair different: CLIP's loss
        expected = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
        assert torch.allclose(toy.contrastive_loss(clip, images, tokens, distinct), expected, atol=1e-5)
        alike = [frozenset({"sky"})] * 6  # every pair positive: uniform targets
        rows, cols = logits.logsumexp(1) - logits.mean(1), logits.logsumexp(0) - logits.mean(0)
        uniform = (rows.mean() + cols.mean()) / 2
        assert torch.allclose(toy.contrastive_loss(clip, images, tokens, alike), uniform, atol=1e-5)


def test_seeded_training_is_deterministic():
    a, info = toy.train_toy_clip(SHORT, progress=False)
    b, _ = toy.train_toy_clip(SHORT, progress=False)
    c, _ = toy.train_toy_clip(dataclasses.replace(SHORT, seed=1), progress=False)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training and info["key"] == SHORT.key()
    assert {"retrieval_acc", "retrieval_chance", "loss_first", "loss_last", "seconds"} <= set(info)


def test_cache_hit_reads_the_file_and_does_not_train(cache, monkeypatch):
    path = toy.toy_clip_file(SHORT, progress=False)
    assert path.parent == cache and path.name == f"toy-clip-{SHORT.key()}.safetensors"
    trained = toy.toy_clip(SHORT, progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again despite the cache")

    monkeypatch.setattr(toy, "train_toy_clip", no_training)
    assert toy.toy_clip_file(SHORT) == path
    again = toy.toy_clip(SHORT)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in trained.state_dict().items())
    assert toy.toy_clip_info(path)["recipe"] == dataclasses.asdict(SHORT)
    # another recipe is another file
    assert dataclasses.replace(SHORT, steps=4).key() != SHORT.key()


def test_toy_config_builds_denseclip_on_the_cached_weights(cache):
    import denseclip

    cfg = toy.toy_config(SHORT, progress=False, prompt={"num_contexts": 4}, aux_loss_weight=0.0)
    assert cfg.clip_pretrained == str(toy.toy_clip_file(SHORT)) and cfg.aux_loss_weight == 0.0
    model = denseclip.build_model(cfg, pretrained=True).eval()
    clip = toy.toy_clip(SHORT)
    assert torch.equal(model.prompting.text_encoder.token_embedding.weight, clip.token_embedding.weight)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 128, 192))
    assert logits.shape == (1, 5, 32, 48)


def _zero_shot_miou(clip, dtype=torch.float32, scenes=8):
    """Training-free value-path (MaskCLIP) maps of held-out synthetic scenes: mIoU and the results."""
    import denseclip
    from denseclip.data import SyntheticSegDataset
    from denseclip.metrics import SegMetric

    zs = denseclip.ZeroShotSegmenter(clip, toy.TOY_CLIP_NAME, method="maskclip", templates="single",
                                     size=192).to(dtype)
    metric, results = SegMetric(len(toy.TOY_CLASSES)), []
    for s in SyntheticSegDataset(scenes, seed=0, size=(192, 288), offset=10**6):
        results.append(zs.predict(s["image"], list(toy.TOY_CLASSES)))
        metric.update(results[-1].labels, torch.as_tensor(s["label"]))
    return metric.compute(), results


def test_default_weights_ship_with_the_package_and_segment(monkeypatch):
    """The default recipe's weights are a file in the package (bfloat16): no training, and they still
    segment the synthetic scenes (84.4 mIoU over 16 held-out scenes when written; the attention pool 4.2),
    in bfloat16 too, which agrees with float32 on the trained model."""
    from safetensors import safe_open

    def no_training(*args, **kwargs):
        raise AssertionError("the shipped weights must load without training")

    monkeypatch.setattr(toy, "train_toy_clip", no_training)
    path = toy.toy_clip_file()
    assert path.parent == toy.ASSETS and path.stat().st_size < 8_000_000
    with safe_open(str(path), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert toy.toy_clip_info(path)["recipe"] == dataclasses.asdict(toy.ToyRecipe())
    clip = toy.toy_clip()
    r = toy.retrieval_accuracy(clip, seed=7)
    assert r["retrieval_acc"] > r["retrieval_chance"] + 0.3, r
    fp32, full = _zero_shot_miou(clip)
    assert fp32["aAcc"] > 0.85 and fp32["mIoU"] > 0.8, fp32  # the largest class covers about a third
    bf16, fast = _zero_shot_miou(clip, torch.bfloat16)
    assert abs(bf16["mIoU"] - fp32["mIoU"]) < 0.01, (bf16, fp32)
    agree = torch.cat([(a.labels == b.labels).flatten() for a, b in zip(full, fast)]).float().mean()
    cos = torch.stack([torch.nn.functional.cosine_similarity(a.scores.flatten(1), b.scores.flatten(1), dim=0)
                       .mean() for a, b in zip(full, fast)])
    assert agree > 0.995 and cos.min() > 0.999, (agree, cos)


@pytest.mark.slow
def test_the_shipped_weights_are_reproducible_from_the_recipe(cache):
    """Training the default recipe again (about a minute on 2 idle cores) gives the shipped file's weights:
    bit-equal in bfloat16 on the machine that wrote them; elsewhere (other SIMD paths) close, and the same
    zero-shot segmentation."""
    clip, info = toy.train_toy_clip(progress=False)
    shipped = toy.toy_clip()
    assert info["key"] == toy.ToyRecipe().key()
    worst = max(float((v.bfloat16().float() - shipped.state_dict()[k]).abs().max() /
                      shipped.state_dict()[k].abs().max().clamp_min(1e-6))
                for k, v in clip.state_dict().items() if v.is_floating_point())
    assert worst < 0.05, worst
    again, _ = _zero_shot_miou(clip)
    ref, _ = _zero_shot_miou(shipped)
    assert abs(again["mIoU"] - ref["mIoU"]) < 0.01
