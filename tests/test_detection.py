"""DenseCLIP detectors on torchvision RetinaNet / Mask R-CNN: pyramid levels, the auxiliary box target and
loss (hand-computed), training, parameter groups, checkpoints, errors. Tiny random models, CPU."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.ops import box_iou

import denseclip.detection.detector as detector_module
from denseclip import save_checkpoint
from denseclip.config import DetectionConfig, get_preset, list_presets
from denseclip.detection import aux_loss, aux_target, build_detector, detect, load_detector

TINY = ["denseclip-retinanet-tiny", "denseclip-maskrcnn-tiny", "retinanet-clip-tiny", "maskrcnn-clip-tiny"]


pytestmark = pytest.mark.usefixtures("one_thread")


COLOURS = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.8, 0.2), 3: (0.1, 0.2, 0.9)}


def _batch(with_masks: bool, size=(96, 128)):
    """Two noisy grey images with two coloured boxes each (the colour tells the label 1..3), box masks."""
    g = torch.Generator().manual_seed(0)
    scale = size[0] / 96
    boxes = [torch.tensor([[8.0, 10.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0]]) * scale,
             torch.tensor([[20.0, 30.0, 70.0, 80.0], [80.0, 5.0, 120.0, 40.0]]) * scale]
    labels = [torch.tensor([1, 3]), torch.tensor([2, 1])]
    images, targets = [], []
    for b, lab in zip(boxes, labels):
        image = 0.5 + 0.05 * torch.randn(3, *size, generator=g)
        m = torch.zeros(len(b), *size, dtype=torch.uint8)
        for j, ((x1, y1, x2, y2), k) in enumerate(zip(b.long().tolist(), lab.tolist())):
            image[:, y1:y2, x1:x2] = torch.tensor(COLOURS[k])[:, None, None]
            m[j, y1:y2, x1:x2] = 1
        images.append(image.clamp(0, 1))
        targets.append({"boxes": b, "labels": lab, **({"masks": m} if with_masks else {})})
    return images, targets


# ----------------------------------------------------------------------------- architecture
@pytest.mark.parametrize("preset, names, strides", [
    ("denseclip-retinanet-tiny", ["p3", "p4", "p5", "p6", "p7"], [8, 16, 32, 64, 128]),
    ("retinanet-clip-tiny", ["p3", "p4", "p5", "p6", "p7"], [8, 16, 32, 64, 128]),
    ("denseclip-maskrcnn-tiny", ["p2", "p3", "p4", "p5", "p6"], [4, 8, 16, 32, 64]),
    ("maskrcnn-clip-tiny", ["p2", "p3", "p4", "p5", "p6"], [4, 8, 16, 32, 64]),
])
def test_pyramid_levels_names_and_shapes(preset, names, strides):
    model = build_detector(preset, pretrained=False).eval()
    h, w = 256, 384
    with torch.no_grad():
        feats, score_map = model.backbone.forward_with_score_map(torch.randn(1, 3, h, w))
    assert list(feats) == names
    assert list(model.backbone.strides) == strides
    c = model.cfg.fpn_channels
    assert model.backbone.out_channels == c
    for (name, f), s in zip(feats.items(), strides):
        assert tuple(f.shape) == (1, c, h // s, w // s), name
    if model.cfg.use_text:
        assert tuple(score_map.shape) == (1, model.cfg.num_classes, h // 32, w // 32)
    else:
        assert score_map is None


def test_with_and_without_language_guidance_from_the_same_code():
    dense = build_detector("denseclip-retinanet-tiny", pretrained=False)
    base = build_detector("denseclip-retinanet-tiny", pretrained=False, prompt=None)
    assert isinstance(dense.detector, RetinaNet) and isinstance(base.detector, RetinaNet)
    k = dense.cfg.num_classes
    c5 = dense.backbone.encoder.feature_channels[3]
    # score maps concatenated onto C5: the FPN's C5 lateral and P6 (on the input C5) take K more channels
    assert dense.backbone.fpn.inner_blocks[-1][0].in_channels == c5 + k
    assert base.backbone.fpn.inner_blocks[-1][0].in_channels == c5
    assert dense.backbone.fpn.extra_blocks.p6.in_channels == c5 + k
    assert base.backbone.fpn.extra_blocks.p6.in_channels == c5
    assert not dense.backbone.fpn.extra_blocks.use_P5
    names = {n.split(".")[3] for n, _ in dense.named_parameters()
             if n.startswith("detector.backbone.prompting.")}
    assert {"text_encoder", "contexts", "gamma", "context_decoder"} <= names
    base_names = [n for n, _ in base.named_parameters()]
    assert not any("prompting" in n or "attnpool" in n for n in base_names)
    assert base.backbone.prompting is None
    gamma = dense.backbone.prompting.gamma
    torch.testing.assert_close(gamma.detach(), torch.full_like(gamma, 1e-4))
    assert dense.backbone.prompting.text_encoder.transformer is not base.backbone.encoder  # parts, not copies
    images, targets = _batch(False)
    assert "loss_aux" in dense(images, targets) and "loss_aux" not in base(images, targets)
    mrcnn = build_detector("denseclip-maskrcnn-tiny", pretrained=False)
    assert isinstance(mrcnn.detector, MaskRCNN)
    assert mrcnn.detector.roi_heads.box_predictor.cls_score.out_features == k + 1  # + background
    assert dense.detector.head.classification_head.num_classes == k  # RetinaNet: K sigmoid classes
    assert list(dense.detector.transform.image_mean) == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_positional_embedding_is_cropped_as_the_authors_do():
    model = build_detector("denseclip-retinanet-tiny", pretrained=False)
    body = model.backbone.encoder
    assert body.pos_embed == "crop" and body.pos_grid == (4, 4)  # input_resolution 128 / 32
    pos = body.visual.attnpool.positional_embedding
    c5 = torch.randn(1, pos.shape[1], 3, 2)
    tokens = c5.flatten(2).transpose(1, 2)
    spatial = pos[1:].reshape(4, 4, -1)[:3, :2].reshape(6, -1)  # rows 0..2, columns 0..1 of the 4 x 4 grid
    expected = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + torch.cat([pos[:1], spatial])
    torch.testing.assert_close(body.pool_tokens(c5), expected)
    big = torch.randn(1, pos.shape[1], 5, 2)  # taller than the grid: resized as the segmentation encoder does
    from denseclip.encoders import resize_pos_embed

    big_tokens = big.flatten(2).transpose(1, 2)
    big_expected = torch.cat([big_tokens.mean(1, keepdim=True), big_tokens], 1)
    big_expected = big_expected + resize_pos_embed(pos, (4, 4), (5, 2))
    torch.testing.assert_close(body.pool_tokens(big), big_expected)
    resized = build_detector("denseclip-retinanet-tiny", pretrained=False, pos_embed="resize")
    resized = resized.backbone.encoder
    assert resized.pos_embed == "resize"
    torch.testing.assert_close(resized.pool_tokens(c5)[:, 1:] - tokens, resize_pos_embed(
        resized.visual.attnpool.positional_embedding, (4, 4), (3, 2))[1:].expand(1, -1, -1))


# The authors' model zoo (detection/README): parameters in millions without the frozen text encoder.
AUTHORS_PARAMS_M = {
    "retinanet-clip-rn50-coco": 38, "denseclip-retinanet-rn50-coco": 60,
    "retinanet-clip-rn101-coco": 57, "denseclip-retinanet-rn101-coco": 78,
    "maskrcnn-clip-rn50-coco": 44, "denseclip-maskrcnn-rn50-coco": 67,
    "maskrcnn-clip-rn101-coco": 63, "denseclip-maskrcnn-rn101-coco": 84,
}


@pytest.mark.parametrize("preset", sorted(AUTHORS_PARAMS_M))
def test_full_size_presets_have_the_authors_parameter_counts(preset):
    import open_clip

    cfg = get_preset(preset)
    with torch.device("meta"):  # shapes only: no memory, no weights
        model = build_detector(cfg, pretrained=False, clip_arch=open_clip.get_model_config(cfg.clip_model))
    n = sum(p.numel() for name, p in model.named_parameters() if ".text_encoder." not in name)
    assert round(n / 1e6) == AUTHORS_PARAMS_M[preset]
    assert model.backbone.encoder.feature_channels[3] == 2048


def test_presets_follow_the_paper():
    assert {"denseclip-retinanet-rn50-coco", "retinanet-clip-rn101-coco", "denseclip-maskrcnn-rn101-coco",
            "maskrcnn-clip-rn50-coco"} <= set(list_presets(DetectionConfig))
    cfg = get_preset("denseclip-retinanet-rn50-coco")
    assert (cfg.min_size, cfg.max_size, cfg.input_resolution, cfg.num_classes) == (800, 1333, 1344, 80)
    assert (cfg.tau, cfg.aux_loss_weight) == (0.07, 1.0)
    assert (cfg.prompt.num_contexts, cfg.prompt.class_token_budget) == (8, 5)
    assert get_preset("maskrcnn-clip-rn50-coco").use_text is False
    assert DetectionConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(KeyError, match="available presets"):
        get_preset("nope")
    with pytest.raises(ValueError, match="detector must be"):
        DetectionConfig(detector="fcos")


# ----------------------------------------------------------------------------- the auxiliary loss
def _grid(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[float(c) for c in r] for r in rows])


def test_aux_target_matches_a_hand_computed_example():
    # padded image 32 x 40 -> stride-4 grid 8 x 10. Box A (class 0): [4, 4, 20, 12] -> cells x 1..5, y 1..3
    # (end exclusive). Box B (class 2): [10, 6, 31, 33] -> x 2..7, y 1..8, y end clamped to 7 (H/4 - 1).
    boxes = torch.tensor([[4.0, 4.0, 20.0, 12.0], [10.0, 6.0, 31.0, 33.0]])
    target, mask = aux_target([boxes], [torch.tensor([0, 2])], num_classes=3, size=(32, 40))
    assert target.shape == (1, 3, 8, 10) and mask.shape == (1, 1, 8, 10)
    a = _grid(["0000000000", "0111100000", "0111100000", "0000000000",
               "0000000000", "0000000000", "0000000000", "0000000000"])
    b = _grid(["0000000000", "0011111000", "0011111000", "0011111000",
               "0011111000", "0011111000", "0011111000", "0000000000"])
    union = _grid(["0000000000", "0111111000", "0111111000", "0011111000",
                   "0011111000", "0011111000", "0011111000", "0000000000"])
    torch.testing.assert_close(target[0, 0], a)
    torch.testing.assert_close(target[0, 1], torch.zeros(8, 10))
    torch.testing.assert_close(target[0, 2], b)
    torch.testing.assert_close(mask[0, 0], union)


def test_aux_loss_equals_the_authors_formula():
    g = torch.Generator().manual_seed(0)
    score_map = (2 * torch.rand(2, 3, 2, 3, generator=g) - 1) / 0.07  # cosines / tau, stride 32 of 64 x 96
    boxes = [torch.tensor([[4.0, 4.0, 40.0, 30.0]]),
             torch.tensor([[30.0, 8.0, 90.0, 60.0], [0.0, 0.0, 9.0, 9.0]])]
    target, mask = aux_target(boxes, [torch.tensor([1]), torch.tensor([0, 2])], 3, (64, 96))
    # the authors: BCE(sigmoid(upsampled S / tau), target, weight=mask) summed / mask.sum() (here in float64)
    up = F.interpolate(score_map.double(), size=(16, 24), mode="bilinear", align_corners=False)
    w = mask.double().expand(-1, 3, -1, -1)
    expected = F.binary_cross_entropy(torch.sigmoid(up), target.double(), weight=w, reduction="sum") / w.sum()
    torch.testing.assert_close(aux_loss(score_map, target, mask).double(), expected, rtol=1e-5, atol=0)
    empty_t, empty_m = aux_target([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], 3, (64, 96))
    assert aux_loss(score_map[:1], empty_t, empty_m).item() == 0.0  # no boxes: 0, not NaN


def test_aux_target_uses_boxes_in_the_transformed_image(monkeypatch):
    seen = {}

    def spy(boxes, classes, num_classes, size):
        seen.update(boxes=[b.clone() for b in boxes], classes=[c.clone() for c in classes], size=size)
        return aux_target(boxes, classes, num_classes, size)

    monkeypatch.setattr(detector_module, "aux_target", spy)
    for preset in ("denseclip-retinanet-tiny", "denseclip-maskrcnn-tiny"):
        model = build_detector(preset, pretrained=False)
        images, targets = _batch(model.cfg.with_masks, size=(48, 64))  # the transform doubles it to 96 x 128
        model(images, targets)
        assert seen["size"] == (96, 128)
        for b, c, t in zip(seen["boxes"], seen["classes"], targets):
            torch.testing.assert_close(b, 2 * t["boxes"])
            torch.testing.assert_close(c, t["labels"] - 1)  # class index 0..K-1 whatever the detector


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module", params=["denseclip-retinanet-tiny", "denseclip-maskrcnn-tiny"])
def trained(request):
    """A tiny detector after 60 iterations on `_batch`, with its losses before and after."""
    torch.manual_seed(0)
    model = build_detector(request.param, pretrained=False).train()
    images, targets = _batch(model.cfg.with_masks)
    lr = 3e-3 if model.is_retinanet else 2e-3
    opt = torch.optim.AdamW(model.param_groups(lr, 1e-4, backbone_lr_mult=1.0), lr=lr)

    def losses():
        torch.manual_seed(0)  # same dropout and RoI sampling -> a fair before/after comparison
        return model(images, targets)

    first = {k: v.item() for k, v in losses().items()}
    for _ in range(60):
        loss = losses()["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = {k: v.item() for k, v in losses().items()}
    return model.eval(), images, first, last


def test_a_few_dozen_iterations_lower_the_losses(trained):
    model, _, first, last = trained
    cls = "classification" if model.is_retinanet else "loss_classifier"
    for k in ("loss", "loss_aux", cls):
        assert last[k] < 0.8 * first[k], (k, first[k], last[k])
    assert last["loss"] == pytest.approx(sum(v for k, v in last.items() if k != "loss"), rel=1e-5)


def test_bfloat16_weights_detect_what_float32_weights_detect(trained):
    """The fast path: `model.to(torch.bfloat16)`; the heads compute in bfloat16, boxes, scores and masks come
    out in float32. On the trained tiny detectors (measured: IoU >= 0.979, scores within 0.012, masks 99.6%
    the same) every float32 detection above 0.3 has a bfloat16 twin of its class."""
    model, images, _, _ = trained
    fast = copy.deepcopy(model).to(torch.bfloat16)
    seen = 0
    for image in images:
        a, b = detect(model, image, score_threshold=0.3), detect(fast, image, score_threshold=0.2)
        assert b.boxes.dtype == b.scores.dtype == torch.float32
        for i in range(len(a)):
            iou = box_iou(a.boxes[i:i + 1], b.boxes)[0] * (b.labels == a.labels[i])
            j = int(iou.argmax())
            assert iou[j] > 0.95 and abs(a.scores[i] - b.scores[j]) < 0.03, (a, b)
            if a.masks is not None:
                assert (a.masks[i] == b.masks[j]).float().mean() > 0.98
            seen += 1
    assert seen >= 2  # trained enough to detect something


def test_param_groups_follow_the_authors_recipe():
    model = build_detector("denseclip-retinanet-tiny", pretrained=False)
    groups = model.param_groups(lr=1e-4, weight_decay=1e-4)
    where = {id(p): (g["lr_mult"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    for name, p in named.items():
        if name.startswith("detector.backbone.prompting.text_encoder."):
            assert id(p) not in where and not p.requires_grad, name  # frozen text encoder: left out
        elif name.startswith("detector.backbone.encoder."):
            assert where[id(p)] == (0.1, 1e-4), name  # CLIP image tower x0.1, its BN decays too (mmcv keys)
        elif "norm" in name:
            assert where[id(p)] == (1.0, 0.0), name
        else:
            assert where[id(p)] == (1.0, 1e-4), name
    norm = named["detector.backbone.prompting.context_decoder.decoder.0.norm1.weight"]
    assert where[id(norm)] == (1.0, 0.0)
    assert where[id(named["detector.backbone.prompting.contexts"])] == (1.0, 1e-4)


# ----------------------------------------------------------------------------- checkpoints and errors
def test_save_load_round_trip(tmp_path):
    model = build_detector("denseclip-maskrcnn-tiny", pretrained=False).eval()
    images, _ = _batch(True)
    with torch.no_grad():
        before = model(images)
    save_checkpoint(model, tmp_path / "run")
    loaded = load_detector(tmp_path / "run")
    assert loaded.cfg == model.cfg and not loaded.training
    with torch.no_grad():
        after = loaded(images)
    for a, b in zip(before, after):
        for k in ("boxes", "scores", "labels", "masks"):
            torch.testing.assert_close(a[k], b[k])
    file = save_checkpoint(model, tmp_path / "single.safetensors")
    assert load_detector(file).cfg == model.cfg
    with pytest.raises(FileNotFoundError):
        load_detector(tmp_path / "missing.safetensors")


def test_clear_errors():
    model = build_detector("denseclip-retinanet-tiny", pretrained=False)
    images, targets = _batch(False)
    with pytest.raises(ValueError, match="training needs targets"):
        model(images)
    bad = [{**t, "labels": t["labels"] - 1} for t in targets]  # 0 is background
    with pytest.raises(ValueError, match=r"labels must be in 1\.\.3"):
        model(images, bad)
    degenerate = [{**targets[0], "boxes": torch.tensor([[5.0, 5.0, 5.0, 20.0], [1.0, 1.0, 9.0, 9.0]])}]
    with pytest.raises(ValueError, match="no width or height"):
        model(images[:1], degenerate)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        model([torch.rand(96, 128)], targets[:1])
    with pytest.raises(ValueError, match="float values"):
        model([torch.zeros(3, 96, 128, dtype=torch.uint8)], targets[:1])
    mrcnn = build_detector("denseclip-maskrcnn-tiny", pretrained=False)
    with pytest.raises(ValueError, match="needs 'masks'"):
        mrcnn(images, targets)
    with pytest.raises(KeyError, match="unknown DetectionConfig field"):
        build_detector("denseclip-retinanet-tiny", pretrained=False, not_a_field=1)
