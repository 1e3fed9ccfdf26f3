"""The authors' released detection checkpoints: `denseclip.load_detector(their .pth)` == their mmdet model.

We cannot download their weights or mmdetection here, so `reference_mmdet.py` restates their detectors'
test path (mmdetection 2.17 / mmcv 1.3.17: pipeline, anchors, delta decoding, NMS, RoIAlign, mask pasting)
and saves small random models in the exact layout of their files (key names, mmcv `meta`). The loader must
read the architecture off the tensors and give the same detections: labels identical, boxes within 1e-4
relative, masks identical after thresholding. The comparisons run in float64, where both sides agree to
~1e-15, so no score or IoU lands on the other side of a threshold by rounding alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_mmdet import (
    AuthorsDetector,
    batched_nms,
    delta2bbox,
    level_anchors,
    maskrcnn_test,
    multiclass_nms,
    paste_mask,
    pipeline,
    randomize_,
    retinanet_test,
    roi_extract,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

import denseclip
from denseclip.config import DetectionConfig
from denseclip.detection.mmdet import (
    LevelRoIAlign,
    MMDetAnchorGenerator,
    MMDetBoxCoder,
    paste_masks,
    preprocess,
)
from denseclip.detection.mmdet import multiclass_nms as our_multiclass_nms
from denseclip.official import translate_detector
from denseclip.vocab import COCO_CLASSES

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("person", "traffic light", "hair drier")  # one, two and three tokens
SMALL = (333, 200)  # img_scale of the fast tests; the released (1333, 800) runs in the slow tier
KINDS = ("retinanet", "maskrcnn")


def mmdet_checkpoint(model: AuthorsDetector, names, kind: str) -> dict:
    """What mmcv's save_checkpoint writes for their detectors: meta (CLASSES, ...), weights, optimizer."""
    meta = {"mmdet_version": "2.17.0", "mmcv_version": "1.3.17", "time": "Sat Dec 11 09:00:00 2021",
            "env_info": "sys.platform: linux\nPython: 3.8.12", "seed": 0, "epoch": 12, "iter": 87960,
            "exp_name": f"{kind}_denseclip_r50_fpn_1x_coco.py", "CLASSES": tuple(names),
            "config": f"model = dict(type='DenseCLIP_{'MaskRCNN' if kind == 'maskrcnn' else 'RetinaNet'}')",
            "hook_msgs": {"last_ckpt": "work_dirs/epoch_12.pth"}}
    state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    return {"meta": meta, "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 2e-6, "weight_decay": 1e-4, "params": [0]}]}}


def uint8_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def as_input(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).double() / 255


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """{kind: (their model in float64, path of their .pth)} for RetinaNet and Mask R-CNN."""
    out = {}
    for seed, kind in enumerate(KINDS, start=1):
        torch.manual_seed(seed)
        ref = randomize_(AuthorsDetector(kind, NAMES), seed)
        path = tmp_path_factory.mktemp("official") / f"{kind}_denseclip_tiny_fpn_1x_coco.pth"
        torch.save(mmdet_checkpoint(ref, NAMES, kind), path)
        out[kind] = (ref.double(), path)
    return out


@pytest.fixture(scope="module")
def loaded(release):
    """{kind: our model from their file (float64, the small test scale)}."""
    out = {}
    for kind, (_, path) in release.items():
        model = denseclip.load_detector(path).double()
        model.cfg = model.cfg.replace(min_size=min(SMALL), max_size=max(SMALL))
        out[kind] = model
    return out


# ---------------------------------------------------------------------------------------------
# the file: architecture off the tensors, every tensor loaded
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_release_layout_loads_with_the_architecture_read_off_the_tensors(release, kind):
    ref, path = release[kind]
    model = denseclip.load_detector(path)
    cfg = model.cfg
    assert not model.training and cfg.mmdet_compat and cfg.detector == kind and cfg.class_names == NAMES
    assert (cfg.input_resolution, cfg.fpn_channels, cfg.pos_embed) == (1344, 16, "crop")
    assert cfg.clip_arch["vision_cfg"]["layers"] == [1, 1, 1, 1] and cfg.clip_arch["embed_dim"] == 64
    assert model.backbone.encoder.num_heads == 32  # their attention pool always has 32 heads
    p = cfg.prompt
    assert (p.num_contexts, p.class_token_budget, p.decoder_width, p.decoder_layers) == (8, 5, 64, 2)
    assert (cfg.score_thresh, cfg.nms_thresh, cfg.detections_per_img, cfg.nms_pre) == (0.05, 0.5, 100, 1000)
    assert (cfg.min_size, cfg.max_size) == (800, 1333)
    assert (cfg.rpn_pre_nms_top_n[1], cfg.rpn_post_nms_top_n[1], cfg.rpn_nms_thresh) == (1000, 1000, 0.7)
    if kind == "maskrcnn":
        assert (cfg.box_head_dim, cfg.mask_head_channels) == (32, 16)
    theirs = {k: v.float() for k, v in ref.state_dict().items()}
    ours = translate_detector(theirs, kind)
    assert len(ours) == len(theirs)  # every tensor of their file, none dropped
    state = model.state_dict()
    assert set(ours) == set(state)
    for key, value in ours.items():
        assert torch.equal(state[key], value), key


def test_background_moves_to_torchvisions_first_class(release, loaded):
    ref, model = release["maskrcnn"][0], loaded["maskrcnn"]
    box = model.detector.roi_heads.box_predictor
    theirs = ref.roi_head.bbox_head
    torch.testing.assert_close(box.cls_score.weight[0], theirs.fc_cls.weight[-1].double())  # background
    torch.testing.assert_close(box.cls_score.weight[1:], theirs.fc_cls.weight[:-1].double())
    assert box.bbox_pred.weight[:4].abs().sum() == 0  # no background regression in theirs
    torch.testing.assert_close(box.bbox_pred.weight[4:], theirs.fc_reg.weight.double())
    logits = model.detector.roi_heads.mask_predictor.mask_fcn_logits.weight
    assert logits.shape[0] == len(NAMES) + 1 and logits[0].abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# detections: ours == the restatement of theirs
# ---------------------------------------------------------------------------------------------

def _compare(ours: dict, theirs, with_masks: bool) -> dict:
    boxes, scores, labels = theirs[:3]
    assert len(boxes) == len(ours["boxes"]) > 0
    assert torch.equal(ours["labels"], labels + 1)  # torchvision's labels 1..K
    rel = ((ours["boxes"] - boxes).abs().max() / boxes.abs().max()).item()
    assert rel <= 1e-4, f"boxes differ: max relative error {rel:.2e}"
    torch.testing.assert_close(ours["scores"], scores, rtol=1e-6, atol=0)
    stats = {"n": len(boxes), "box_rel_err": rel}
    if with_masks:
        mask = ours["masks"][:, 0] >= 0.5
        assert mask.shape == theirs[3].shape
        assert torch.equal(mask, theirs[3]), f"{(mask != theirs[3]).sum()} mask pixels differ"
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
        stats["mask_fraction"] = (mask.sum() / area).item()  # of the detected boxes' area
    return stats


@pytest.mark.parametrize("kind", KINDS)
def test_detections_equal_the_authors(release, loaded, kind):
    ref, model = release[kind][0], loaded[kind]
    img = uint8_image(45, 97, seed=2)  # resized 154 x 333: a non-integer scale, pipelines agree exactly
    with torch.no_grad():
        ours = model([as_input(img)])[0]
    theirs = retinanet_test(ref, img, SMALL) if kind == "retinanet" else maskrcnn_test(ref, img, SMALL)
    stats = _compare(ours, theirs, kind == "maskrcnn")
    assert stats["n"] == 100  # the cut at 100 per image is exercised
    if kind == "maskrcnn":
        assert 0.05 < stats["mask_fraction"] < 0.95  # masks are not trivially empty or full


def test_detections_are_language_guided(release, loaded):
    """The text side changes the detections (so the comparison above would catch a wrong text path)."""
    model = loaded["retinanet"]
    x = as_input(uint8_image(45, 97, seed=2))
    with torch.no_grad():
        before = model([x])[0]
        gamma = model.backbone.prompting.gamma
        saved = gamma.detach().clone()
        gamma.data.mul_(-3)
        after = model([x])[0]
        gamma.data.copy_(saved)
    assert not torch.allclose(before["scores"], after["scores"])


@pytest.mark.slow
@pytest.mark.parametrize("size", [(70, 50), (400, 500)])  # resized 1120 x 800 and 800 x 1000
@pytest.mark.parametrize("kind", KINDS)
def test_detections_equal_the_authors_at_1333x800(release, loaded, kind, size):
    """Masks pasted at a photo's size too (400 x 500), not only at 70 x 50. Both scales are powers of two
    times the image, so no resized pixel lands within rounding of a half grey level: at other scales one
    can, and float64 then rounds it either way depending on the thread count (480 x 640 does, at 1)."""
    ref, model = release[kind][0], loaded[kind]
    model.cfg = model.cfg.replace(min_size=800, max_size=1333)
    try:
        img = uint8_image(*size, seed=1)
        with torch.no_grad():
            ours = model([as_input(img)])[0]
        theirs = retinanet_test(ref, img) if kind == "retinanet" else maskrcnn_test(ref, img)
        _compare(ours, theirs, kind == "maskrcnn")
    finally:
        model.cfg = model.cfg.replace(min_size=min(SMALL), max_size=max(SMALL))


# ---------------------------------------------------------------------------------------------
# the building blocks, one by one, against the restatement (and torchvision's differences)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, scale", [((45, 97), SMALL), ((70, 50), (1333, 800)),
                                         ((800, 1333), (1333, 800))])
def test_image_pipeline(size, scale):
    img = uint8_image(*size, seed=2 if size == (45, 97) else 1)
    x, meta = pipeline(img, scale)
    y, resized, factor = preprocess(as_input(img), DetectionConfig(min_size=min(scale), max_size=max(scale)))
    assert resized == meta["img_shape"] and y.shape == x.shape and y.shape[-1] % 32 == 0 == y.shape[-2] % 32
    assert torch.equal(factor, torch.from_numpy(meta["scale_factor"]).double())
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)


def test_the_8bit_resize_does_not_depend_on_the_model_dtype():
    """cv2 resizes the uint8 picture: a float32 model gets the float64 pipeline's input, cast."""
    img, cfg = uint8_image(480, 640, seed=3), DetectionConfig(min_size=800, max_size=1333)
    y64, _, _ = preprocess(as_input(img), cfg)
    y32, _, _ = preprocess(as_input(img).float(), cfg)
    assert y32.dtype == torch.float32 and torch.equal(y32, y64.float())


@pytest.mark.parametrize("sizes, strides, scales", [
    ((32, 64, 128, 256, 512), (8, 16, 32, 64, 128), [4 * 2 ** (i / 3) for i in range(3)]),  # RetinaNet
    ((32, 64, 128, 256, 512), (4, 8, 16, 32, 64), [8]),  # RPN
])
def test_anchors(sizes, strides, scales):
    octave = [s / scales[0] for s in scales]
    gen = MMDetAnchorGenerator([[s * o for o in octave] for s in sizes], [(0.5, 1.0, 2.0)] * 5, strides)
    grids = [(25, 34), (13, 17), (7, 9), (4, 5), (2, 3)]  # an 800 x 1088 input: P6/P7 sizes rounded up
    feats = [torch.zeros(1, 1, h, w, dtype=torch.float64) for h, w in grids]
    images = ImageList(torch.zeros(1, 3, 800, 1088), [(800, 1066)])
    ours = gen(images, feats)[0]
    theirs = torch.cat([level_anchors(s, scales, (0.5, 1.0, 2.0), h, w) for s, (h, w) in zip(strides, grids)])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    tv = AnchorGenerator(gen.sizes, gen.aspect_ratios)(images, [f.float() for f in feats])[0]
    assert not torch.allclose(tv.double(), theirs)  # rounding and derived strides: torchvision differs


def test_box_decoding():
    g = torch.Generator().manual_seed(0)
    rois = torch.rand(50, 2, generator=g, dtype=torch.float64) * 300
    rois = torch.cat([rois, rois + torch.rand(50, 2, generator=g, dtype=torch.float64) * 200], dim=1)
    deltas = torch.randn(50, 12, generator=g, dtype=torch.float64) * 3
    deltas[:5, 2::4] = -20  # far below -log(1000 / 16): mmdet clamps both ways, torchvision only above
    deltas[5:10, 3::4] = 20
    for weights, stds in (((1.0,) * 4, (1.0,) * 4), ((10.0, 10.0, 5.0, 5.0), (0.1, 0.1, 0.2, 0.2))):
        ours = MMDetBoxCoder(weights).decode_single(deltas, rois)
        from torchvision.ops import clip_boxes_to_image

        ours = clip_boxes_to_image(ours.reshape(-1, 4), (400, 600)).reshape(50, 12)
        torch.testing.assert_close(ours, delta2bbox(rois, deltas, stds, (400, 600)), rtol=0, atol=1e-9)


def _random_rois(n: int, seed: int, size=(160, 224)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([size[1], size[0]]) - 10
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) ** 3 * 250  # small and large, some past the edge
    rois = torch.cat([xy, xy + wh], dim=1)
    rois[0] = torch.tensor([5.0, 5.0, 5.0, 30.0])  # zero width
    rois[1] = torch.tensor([-50.0, -40.0, -10.0, -5.0])  # outside the image
    return rois


def test_roi_align_and_level_mapping():
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(1, 4, 160 // s, 224 // s, generator=g, dtype=torch.float64) for s in (4, 8, 16, 32)]
    rois = _random_rois(120, seed=2)
    pool = LevelRoIAlign(["p2", "p3", "p4", "p5"], 7, (4, 8, 16, 32))
    ours = pool(dict(zip(["p2", "p3", "p4", "p5"], feats)), [rois])
    torch.testing.assert_close(ours, roi_extract(feats, rois, 7), rtol=0, atol=1e-12)
    from torchvision.ops import MultiScaleRoIAlign

    levels = dict(zip(["p2", "p3", "p4", "p5"], feats))
    tv = MultiScaleRoIAlign(list(levels), 7, 2)(levels, [rois], [(160, 224)])
    assert not torch.allclose(tv, ours)  # torchvision's default (aligned=False, 2 samples) differs


def test_mask_pasting():
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(40, 28, 28, generator=g, dtype=torch.float64)
    boxes = _random_rois(40, seed=4, size=(90, 120)).clamp(min=0)
    boxes[:, 2::2] = boxes[:, 2::2].clamp(max=120)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(max=90)
    ours = paste_masks(probs, boxes, (90, 120))[:, 0] >= 0.5
    theirs = torch.stack([paste_mask(p, b, 90, 120, 0.5) for p, b in zip(probs, boxes)])
    assert torch.equal(ours, theirs) and theirs.any()


def test_multiclass_nms():
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(300, 2, generator=g, dtype=torch.float64) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(300, 2, generator=g, dtype=torch.float64) * 40], dim=1)
    scores = torch.rand(300, 4, generator=g, dtype=torch.float64) * 0.3  # K = 3 and a background column
    ours = our_multiclass_nms(boxes[:, None].expand(-1, 3, 4), scores[:, :-1], 0.05, 0.5, 100)
    theirs = multiclass_nms(boxes, scores, 0.05, 0.5, 100)
    assert len(theirs[0]) == 100
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    level_ids = torch.randint(0, 5, (300,), generator=g)
    from torchvision.ops import batched_nms as tv_batched_nms

    assert torch.equal(tv_batched_nms(boxes, scores[:, 0], level_ids, 0.7), batched_nms(boxes, scores[:, 0],
                                                                                        level_ids, 0.7))


def test_p7_has_no_relu_in_the_authors_fpn(loaded):
    fpn = loaded["retinanet"].backbone.fpn
    c5 = torch.randn(1, fpn.extra_blocks.p6.in_channels, 7, 9, dtype=torch.float64)
    p, _ = fpn.extra_blocks([torch.zeros(1)], [c5], ["p5"])
    torch.testing.assert_close(p[2], fpn.extra_blocks.p7(fpn.extra_blocks.p6(c5)))


# ---------------------------------------------------------------------------------------------
# what a user does with the loaded model; clear errors
# ---------------------------------------------------------------------------------------------

def test_detect_gives_what_a_ui_needs(release):
    model = denseclip.load_detector(release["maskrcnn"][1])
    model.cfg = model.cfg.replace(min_size=min(SMALL), max_size=max(SMALL))
    r = denseclip.detect(model, uint8_image(45, 97, seed=2), score_threshold=0.3)
    assert len(r) > 0 and r.boxes.shape == (len(r), 4) and r.scores.min() >= 0.3
    assert r.masks.shape == (len(r), 45, 97) and r.masks.dtype == torch.bool
    assert set(r.names) <= set(NAMES) and r.class_names == NAMES


def test_class_names_come_from_meta_or_coco_or_the_argument(release, tmp_path):
    ref, path = release["retinanet"]
    ckpt = mmdet_checkpoint(ref, NAMES, "retinanet")
    del ckpt["meta"]["CLASSES"]
    torch.save(ckpt, tmp_path / "no_classes.pth")
    with pytest.raises(ValueError, match="3 classes but no matching class names.*class_names"):
        denseclip.load_detector(tmp_path / "no_classes.pth")
    renamed = ("dog", "cat", "bird")
    rescued = denseclip.load_detector(tmp_path / "no_classes.pth", class_names=renamed)
    assert rescued.cfg.class_names == renamed
    assert denseclip.load_detector(path, class_names=renamed).class_names == renamed
    from denseclip.official import config_from_official_detector

    state = dict(ckpt["state_dict"])  # 80 classes and no names: COCO's, as the authors' config
    state["bbox_head.retina_cls.weight"] = torch.zeros(9 * 80, 16, 3, 3)
    state["neck.lateral_convs.2.conv.weight"] = torch.zeros(16, 8 * 32 + 80, 1, 1)
    assert config_from_official_detector(state, {}).class_names == COCO_CLASSES


def test_clear_errors(release, tmp_path):
    ref, path = release["maskrcnn"]
    ckpt = mmdet_checkpoint(ref, NAMES, "maskrcnn")
    torch.save({"state_dict": {"decode_head.conv_seg.weight": torch.zeros(3, 8, 1, 1)}}, tmp_path / "s.pth")
    with pytest.raises(ValueError, match="segmentation checkpoint: load it with denseclip.load_checkpoint"):
        denseclip.load_detector(tmp_path / "s.pth")
    with pytest.raises(ValueError, match="holds a detector: load it with denseclip.load_detector"):
        denseclip.load_checkpoint(path)
    faster = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("roi_head.mask_head.")}
    torch.save({"state_dict": faster}, tmp_path / "faster.pth")
    with pytest.raises(ValueError, match="Faster R-CNN"):
        denseclip.load_detector(tmp_path / "faster.pth")
    missing = dict(ckpt["state_dict"])
    del missing["rpn_head.rpn_cls.bias"]
    torch.save({"meta": ckpt["meta"], "state_dict": missing}, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing \['rpn_head\.rpn_cls\.bias'\]"):  # named as in their file
        denseclip.load_detector(tmp_path / "missing.pth")
    extra = {**ckpt["state_dict"], "roi_head.mask_iou_head.fc.weight": torch.zeros(1)}
    torch.save({"meta": ckpt["meta"], "state_dict": extra}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected tensor 'roi_head.mask_iou_head.fc.weight'"):
        denseclip.load_detector(tmp_path / "extra.pth")


def test_loaded_model_saves_and_fine_tunes_in_our_format(release, tmp_path):
    model = denseclip.load_detector(release["maskrcnn"][1])
    model.cfg = model.cfg.replace(min_size=min(SMALL), max_size=max(SMALL))
    x = as_input(uint8_image(45, 97, seed=2)).float()
    with torch.no_grad():
        before = model([x])[0]
    denseclip.save_checkpoint(model, tmp_path / "ours")
    again = denseclip.load_detector(tmp_path / "ours")
    assert again.cfg.mmdet_compat
    with torch.no_grad():
        after = again([x])[0]
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(before[key], after[key])
    again.train()  # torchvision's losses and samplers, on the authors' weights
    target = {"boxes": torch.tensor([[10.0, 5.0, 60.0, 40.0]]), "labels": torch.tensor([2]),
              "masks": torch.zeros(1, 45, 97, dtype=torch.uint8)}
    losses = again([x], [target])
    assert torch.isfinite(losses["loss"]) and {"loss_mask", "loss_aux", "loss_objectness"} <= set(losses)
