"""The DenseCLIP segmentor: shapes, losses from their formulas, gradients, caching, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import denseclip
from denseclip import DenseCLIP, build_model, get_preset

TINY = ["denseclip-tiny-rn", "denseclip-tiny-vit", "fpn-clip-tiny-rn"]


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 64, 96, generator=g), torch.randint(0, 5, (2, 64, 96), generator=g)


@pytest.mark.parametrize("preset", TINY)
def test_eval_logits_shape_and_determinism(preset, batch):
    model = build_model(preset, pretrained=False).eval()
    with torch.no_grad():
        a, b = model(batch[0]), model(batch[0])
    assert a.shape == (2, 5, 16, 24)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("preset", TINY)
def test_train_losses_and_one_step_lowers_loss(preset, batch):
    model = build_model(preset, pretrained=False).train()
    opt = torch.optim.AdamW(model.param_groups(lr=1e-3, weight_decay=1e-4, backbone_lr_mult=1.0), lr=1e-3)
    images, labels = batch
    first = None
    for _ in range(8):
        torch.manual_seed(0)  # same dropout masks -> a fair before/after comparison
        losses = model(images, labels)
        first = losses["loss"].item() if first is None else first
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    torch.manual_seed(0)
    assert model(images, labels)["loss"].item() < first
    expected = {"loss_seg", "loss"} | ({"loss_aux"} if model.cfg.use_text else set())
    assert set(losses) == expected


def test_losses_equal_their_formulas(batch):
    model = build_model("denseclip-tiny-rn", pretrained=False).eval()  # eval: no dropout, fixed BN
    images, labels = batch
    labels = labels.clone()
    labels[:, :5] = 255  # some ignored pixels
    with torch.no_grad():
        out = model.forward_dense(images)
        losses = model.losses(out, labels)
    up = F.interpolate(out["logits"], size=labels.shape[1:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(up, labels, ignore_index=255, reduction="sum") / labels.numel()  # mmseg 0.x mean
    torch.testing.assert_close(losses["loss_seg"], ce)
    s = F.interpolate(out["score_map"] / 0.07, size=labels.shape[1:], mode="bilinear", align_corners=False)
    aux = 0.4 * F.cross_entropy(s, labels, ignore_index=255, reduction="sum") / labels.numel()
    torch.testing.assert_close(losses["loss_aux"], aux)
    torch.testing.assert_close(losses["loss"], ce + aux)
    model.cfg = model.cfg.replace(loss_avg_non_ignore=True)
    with torch.no_grad():
        avg = model.losses(out, labels)["loss_seg"]
    torch.testing.assert_close(avg, F.cross_entropy(up, labels, ignore_index=255))


def test_score_maps_feed_the_neck_and_follow_the_formula(batch):
    model = build_model("denseclip-tiny-rn", pretrained=False).eval()
    with torch.no_grad():
        model.prompting.gamma.fill_(0.5)
        enc = model.encoder(batch[0])
        out = model.forward_dense(batch[0])
        t = model.prompting.text_embeddings()
        b, d, h, w = enc.dense.shape
        ctx = torch.cat([enc.global_embedding[:, None], enc.dense.flatten(2).transpose(1, 2)], dim=1)
        t2 = t[None].expand(b, -1, -1)
        t2 = t2 + 0.5 * model.prompting.context_decoder(t2, ctx)
        s = torch.einsum("bchw,bkc->bkhw", F.normalize(enc.dense, dim=1), F.normalize(t2, dim=2))
    torch.testing.assert_close(out["score_map"], s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["text_embeddings"], t2, atol=1e-5, rtol=1e-5)
    assert model.neck.lateral_convs[3].conv.in_channels == 256 + 5  # C5 + K score maps


def test_gradients_reach_trainable_parts_not_frozen_text_encoder(batch):
    model = build_model("denseclip-tiny-rn", pretrained=False).train()
    model(*batch)["loss"].backward()
    prompting = model.prompting
    assert prompting.contexts.grad is not None and prompting.contexts.grad.abs().sum() > 0
    assert prompting.gamma.grad is not None and prompting.gamma.grad.abs().sum() > 0
    assert all(p.grad is not None for p in prompting.context_decoder.parameters())
    assert model.head.conv_seg.weight.grad.abs().sum() > 0
    assert model.encoder.visual.layer1[0].conv1.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in prompting.text_encoder.parameters())


def test_unfrozen_text_encoder_trains_at_the_backbone_lr(batch):
    model = build_model("denseclip-tiny-rn", pretrained=False, prompt={"freeze_text_encoder": False})
    model(*batch)["loss"].backward()
    assert all(p.requires_grad for p in model.prompting.text_encoder.parameters())
    assert model.prompting.text_encoder.token_embedding.weight.grad is not None
    groups = model.param_groups(lr=1e-4, weight_decay=1e-4, backbone_lr_mult=0.1)
    by_param = {id(p): g for g in groups for p in g["params"]}
    emb = model.prompting.text_encoder.token_embedding.weight
    assert by_param[id(emb)]["lr"] == pytest.approx(1e-5)


def test_param_groups_follow_the_authors_recipe():
    model = build_model("denseclip-tiny-rn", pretrained=False)
    groups = model.param_groups(lr=1e-4, weight_decay=1e-4)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_param[id(named["encoder.visual.conv1.weight"])]["lr"] == pytest.approx(1e-5)
    assert by_param[id(named["prompting.contexts"])]["lr"] == pytest.approx(1e-4)
    assert by_param[id(named["prompting.context_decoder.decoder.0.norm1.weight"])]["weight_decay"] == 0.0
    # "norm" is matched by name only: the LayerNorm at memory_proj.0 keeps its decay, as in mmcv
    assert by_param[id(named["prompting.context_decoder.memory_proj.0.weight"])]["weight_decay"] == 1e-4
    assert by_param[id(named["head.scale_heads.0.0.bn.weight"])]["weight_decay"] == 1e-4
    assert not any(n.startswith("prompting.text_encoder.") and id(p) in by_param for n, p in named.items())
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for n, p in named.items() if p.requires_grad)


def test_contexts_and_gamma_init():
    cfg = get_preset("denseclip-tiny-rn").replace(prompt={"num_contexts": 8, "decoder_width": 64})
    prompting = build_model(cfg, pretrained=False).prompting
    assert prompting.contexts.shape == (1, 8, 32)
    assert prompting.contexts.abs().max() <= 2.0  # trunc_normal_ defaults: std 1, cut at +-2
    assert 0.6 < prompting.contexts.std().item() < 1.1
    torch.testing.assert_close(prompting.gamma.detach(), torch.full((32,), 1e-4))
    phrase = build_model("denseclip-tiny-rn", pretrained=False, prompt={"context_init": "a photo of a"})
    from denseclip.prompting import phrase_embeddings

    expected = phrase_embeddings(phrase.prompting.text_encoder.token_embedding, "a photo of a")
    torch.testing.assert_close(phrase.prompting.contexts[0].detach(), expected)
    with pytest.raises(ValueError, match="num_contexts"):
        build_model("denseclip-tiny-rn", pretrained=False, prompt={"context_init": "a photo"})


def test_text_cache_used_in_eval_and_invalidated(batch):
    model = build_model("denseclip-tiny-rn", pretrained=False).eval()
    calls = []
    model.prompting.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(batch[0])
        model(batch[0])
        assert len(calls) == 1
        model.prompting.contexts.add_(0.1)  # parameters changed -> recompute
        model(batch[0])
        assert len(calls) == 2
        model.set_class_names(["a", "b", "c", "d", "e"])
        out = model.forward_dense(batch[0])
        assert len(calls) == 3 and model.class_names == ("a", "b", "c", "d", "e")
    model.train()
    model(batch[0])
    assert len(calls) == 4  # training never uses the cache
    assert out["logits"].shape[1] == 5


def test_pre_model_prompting_and_no_decoder_variants(batch):
    pre = build_model("denseclip-tiny-rn", pretrained=False,
                      prompt={"pre_model_prompting": True, "context_decoder": False})
    losses = pre(*batch)
    losses["loss"].backward()
    assert pre.prompting.pre_prompter.queries.grad is not None and pre.prompting.context_decoder is None
    with torch.no_grad():
        assert pre.eval()(batch[0]).shape == (2, 5, 16, 24)


def test_baseline_has_no_text_parts():
    model = build_model("fpn-clip-tiny-rn", pretrained=False)
    assert model.prompting is None and not model.cfg.use_text
    assert not hasattr(model, "text_embeddings") and not hasattr(model, "contexts")
    assert model.neck.lateral_convs[3].conv.in_channels == 256
    # nothing without a gradient (DDP's "unused parameters"): no text side, no attention pool
    assert not any(k.startswith("prompting") or ".attnpool." in k for k in model.state_dict())


def test_baseline_every_parameter_gets_a_gradient(batch):
    for preset, extra in (("fpn-clip-tiny-rn", {}), ("denseclip-tiny-vit", {"prompt": None})):
        model = build_model(preset, pretrained=False, **extra)
        model(*batch)["loss"].backward()
        assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_vit_concat_index_two(batch):
    model = build_model("denseclip-tiny-vit", pretrained=False)
    assert model.cfg.score_concat_index == 2
    assert model.neck.lateral_convs[2].conv.in_channels == 32 + 5


def test_timm_backbone_guided_by_text(batch):
    cfg = get_preset("denseclip-tiny-rn").replace(backbone="resnet18", score_concat_index=3)
    model = build_model(cfg, pretrained=False)
    losses = model(*batch)
    assert set(losses) == {"loss_seg", "loss_aux", "loss"}
    losses["loss"].backward()
    assert model.encoder.proj.weight.grad is not None


def test_channels_last_and_bf16_autocast(batch):
    model = build_model("denseclip-tiny-rn", pretrained=False).eval()
    with torch.no_grad():
        ref = model(batch[0])
        cl = model.to(memory_format=torch.channels_last)(batch[0].to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model(batch[0])
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(bf).all()
    assert (bf.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


@pytest.mark.parametrize("bad", [torch.randn(1, 4, 64, 64), torch.randn(3, 64, 64)])
def test_bad_image_shapes_raise_clear_errors(bad):
    model = build_model("denseclip-tiny-rn", pretrained=False).eval()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(bad)


def test_non_finite_images_are_refused_at_the_api_edge():
    model = build_model("denseclip-tiny-rn", pretrained=False).eval()
    with pytest.raises(ValueError, match="NaN"):
        denseclip.predict(model, torch.full((3, 64, 64), float("nan")))


@pytest.mark.parametrize("names, match", [
    ((), "no class names|empty"),
    (("sky", "sky"), "uplicate"),
    (("sky", "  "), "blank|empty"),
    (("sky", "a very very long class name that does not fit"), "budget"),
])
def test_bad_class_names(names, match):
    with pytest.raises(ValueError, match=match):
        build_model("denseclip-tiny-rn", pretrained=False, class_names=names)


def test_bad_labels(batch):
    model = build_model("denseclip-tiny-rn", pretrained=False)
    with pytest.raises((IndexError, RuntimeError), match="out of bounds"):  # cross_entropy's own check
        model(batch[0], torch.full((2, 64, 96), 7))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        model(batch[0], torch.zeros(64, 96, dtype=torch.long))


def test_set_class_names_requires_same_count():
    model = build_model("denseclip-tiny-rn", pretrained=False)
    with pytest.raises(ValueError, match="5 classes"):
        model.set_class_names(["a", "b"])


def test_unknown_preset_and_field():
    with pytest.raises(KeyError, match="available presets"):
        build_model("nope", pretrained=False)
    with pytest.raises(KeyError, match="unknown DenseCLIPConfig field"):
        build_model("denseclip-tiny-rn", pretrained=False, num_context=3)
    with pytest.raises(KeyError, match="unknown DenseCLIPConfig.prompt field"):
        build_model("denseclip-tiny-rn", pretrained=False, prompt={"num_context": 3})
    with pytest.raises(TypeError, match="build_detector"):
        build_model("denseclip-retinanet-tiny", pretrained=False)


def test_public_api_exports():
    for name in ("build_model", "load_checkpoint", "predict", "DenseCLIPConfig", "DenseCLIP"):
        assert hasattr(denseclip, name)
    assert isinstance(build_model("denseclip-tiny-rn", pretrained=False), DenseCLIP)
