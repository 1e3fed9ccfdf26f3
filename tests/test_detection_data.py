"""COCO-format detection data, COCOeval end to end, and `detect()` in the input image's coordinates."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from denseclip.config import TINY_DET_CLASSES
from denseclip.data.base import DatasetError
from denseclip.detection import CocoDetection, build_detector, collate_detection, detect, hflip
from train.det_eval import coco_eval, detections_to_coco, evaluate_detector
from train.det_synthetic import write_synthetic_coco

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic_coco(tmp_path_factory.mktemp("coco"), "val", num_images=6, seed=1)


def _mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_synthetic_coco_and_dataset(synth):
    image_dir, ann_file = synth
    data = json.loads(ann_file.read_text())
    assert [c["id"] for c in data["categories"]] == [3, 7, 11]  # not 1..K, as in COCO
    kinds = {type(a["segmentation"]).__name__ for a in data["annotations"]}
    assert kinds == {"list", "dict"}  # polygons and RLE
    ds = CocoDetection(image_dir, ann_file, with_masks=True)
    assert len(ds) == 6 and ds.class_names == TINY_DET_CLASSES and ds.cat_ids == (3, 7, 11)
    n_boxes = 0
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.shape == (3, 96, 128) and image.dtype == torch.float32
        assert 0 <= image.min() <= image.max() <= 1
        assert t["labels"].dtype == torch.int64 and set(t["labels"].tolist()) <= {1, 2, 3}
        assert t["masks"].shape == (len(t["boxes"]), 96, 128)
        for box, mask in zip(t["boxes"], t["masks"]):  # the box is the extent of its mask
            assert box.tolist() == pytest.approx(_mask_box(mask), abs=1.01)
        n_boxes += len(t["boxes"])
    assert n_boxes == len(data["annotations"])
    # the colour tells the class: the mean colour inside each mask is the category's colour
    image, t = ds[0]
    for label, mask in zip(t["labels"], t["masks"]):
        rgb = image[:, mask.bool()].mean(dim=1)
        assert rgb.argmax().item() == {1: 0, 2: 1, 3: 2}[label.item()]


def test_flip_moves_boxes_with_masks(synth):
    ds = CocoDetection(*synth, with_masks=True)
    image, t = ds[1]
    fimage, ft = hflip(image, t)
    torch.testing.assert_close(fimage, image.flip(-1))
    for box, mask in zip(ft["boxes"], ft["masks"]):
        assert box.tolist() == pytest.approx(_mask_box(mask), abs=1.01)
    train = CocoDetection(*synth, train=True, with_masks=True, hflip_prob=1.0)
    torch.testing.assert_close(train[1][1]["boxes"], ft["boxes"])


def test_dataset_errors(synth, tmp_path):
    image_dir, ann_file = synth
    with pytest.raises(ValueError, match="class names differ"):
        CocoDetection(image_dir, ann_file, class_names=("a", "b", "c"))
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoDetection(image_dir, tmp_path / "missing.json")
    Image.new("RGB", (64, 64)).save(tmp_path / "000000.png")  # wrong size for the json's first image
    with pytest.raises(ValueError, match="do not belong together"):
        CocoDetection(tmp_path, ann_file)[0]


def _copy(synth, tmp_path, edit=None):
    """A copy of the synthetic set whose json `edit` may change."""
    image_dir, ann_file = synth
    shutil.copytree(image_dir, tmp_path / "images")
    data = json.loads(ann_file.read_text())
    if edit is not None:
        edit(data)
    (tmp_path / "instances.json").write_text(json.dumps(data))
    return tmp_path / "images", tmp_path / "instances.json"


def test_validate_checks_sizes_as_loading_turns_them(synth, tmp_path):
    image_dir, ann_file = _copy(synth, tmp_path)
    CocoDetection(image_dir, ann_file).validate()
    rgb = np.asarray(Image.open(image_dir / "000001.png"))  # 96 x 128: stored turned, EXIF turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb))).save(image_dir / "000001.png", exif=exif.tobytes())
    ds = CocoDetection(image_dir, ann_file)
    ds.validate()  # 128 x 96 on disk, 96 x 128 as loaded: fine
    assert ds.load_image(ds.ids[1]).shape == (96, 128, 3)
    Image.new("RGB", (100, 50)).save(image_dir / "000002.png")
    (image_dir / "000003.png").unlink()
    with pytest.raises(DatasetError, match=r"2 problem\(s\)") as err:
        ds.validate()
    assert any("000002.png is 50x100 (H x W)" in p and "says 96x128" in p for p in err.value.problems)
    assert any("file not found" in p and "000003.png" in p for p in err.value.problems)


def test_unknown_category_names_the_annotation(synth, tmp_path):
    def edit(data):
        data["annotations"][0]["category_id"] = 5

    image_dir, ann_file = _copy(synth, tmp_path, edit)
    ds = CocoDetection(image_dir, ann_file)
    pattern = r"annotation 1 of image 000000\.png in .*instances\.json has category_id 5, which is not " \
              r"one of its categories \[3, 7, 11\]"
    with pytest.raises(DatasetError, match=pattern):
        ds.validate()
    with pytest.raises(ValueError, match=pattern):  # without validation, loading stops at it
        ds[0]


def _large_only(data):
    """Keep one large box: no small or medium objects to score."""
    data["annotations"] = [{**data["annotations"][0], "bbox": [0, 0, 120, 90], "area": 120.0 * 90}]


def test_coco_minus_one_is_reported_as_absent(synth, tmp_path):
    """COCOeval's -1 (no ground truth of a size) is NaN, not 0.0 AP, with and without detections."""
    image_dir, ann_file = _copy(synth, tmp_path, _large_only)
    ds = CocoDetection(image_dir, ann_file)
    ids = list(ds.coco.imgs)
    perfect = [{"image_id": ids[0], "category_id": ds.cat_ids[0], "bbox": [0, 0, 120, 90], "score": 0.9}]
    stats, _ = coco_eval(ds.coco, perfect, "bbox", ids)
    assert stats["AP"] == pytest.approx(1.0) and stats["APl"] == pytest.approx(1.0)
    assert math.isnan(stats["APs"]) and math.isnan(stats["APm"])
    empty, _ = coco_eval(ds.coco, [], "bbox", ids)
    assert empty["AP"] == empty["APl"] == 0.0 and math.isnan(empty["APs"]) and math.isnan(empty["APm"])


def test_cocoeval_scores_ground_truth_as_perfect(synth, tmp_path):
    """Detections made from the ground truth must score AP = 1: checks xyxy -> xywh, label -> category id,
    mask -> RLE, and the image ids."""
    ds = CocoDetection(*synth, with_masks=True)
    dets, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        n = len(t["boxes"])
        dets.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.linspace(1.0, 0.5, n),
                     "masks": t["masks"][:, None].float()})
        ids.append(int(t["image_id"]))
    results = detections_to_coco(dets, ids, ds.cat_ids, with_masks=True)
    for iou_type in ("bbox", "segm"):
        stats, summary = coco_eval(ds.coco, results, iou_type, ids)
        assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0), summary
    wrong = [{**r, "category_id": 3 if r["category_id"] != 3 else 7} for r in results]
    assert coco_eval(ds.coco, wrong, "bbox", ids)[0]["AP"] < 0.5
    assert coco_eval(ds.coco, [], "bbox", ids)[0]["AP"] == 0.0


@pytest.mark.parametrize("preset", ["denseclip-maskrcnn-tiny", "denseclip-retinanet-tiny"])
def test_evaluate_detector_end_to_end_writes_metrics(preset, synth, tmp_path):
    model = build_detector(preset, pretrained=False, score_thresh=0.0)
    ds = CocoDetection(*synth, with_masks=model.cfg.with_masks, class_names=model.class_names)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_detection)
    out = tmp_path / "metrics.json"
    metrics = evaluate_detector(model, loader, ds, out_json=out, extra={"model": preset})
    assert model.training  # restored
    types = ("bbox", "segm") if model.cfg.with_masks else ("bbox",)
    written = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert written["model"] == preset and written["num_images"] == 6 and written["num_detections"] > 0
    for t in types:
        for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            v = metrics[f"{t}_{k}"]
            absent = math.isnan(v) and k in ("APs", "APm", "APl")  # no objects of that size: null in JSON
            assert (absent and written[f"{t}_{k}"] is None) or (0.0 <= v <= 1.0 and written[f"{t}_{k}"] == v)
    assert ("segm_AP" in written) == model.cfg.with_masks
    assert (tmp_path / "metrics_detections.json").is_file()


@pytest.mark.parametrize("preset", ["denseclip-maskrcnn-tiny", "denseclip-retinanet-tiny"])
def test_detect_returns_boxes_in_the_input_image_coordinates(preset):
    """An image exactly 2x (nearest) the transform's size is resized back to the same pixels, so detect()
    on it must give exactly twice the boxes of the small image (which the transform leaves as is)."""
    model = build_detector(preset, pretrained=False, score_thresh=0.0).eval()
    rng = np.random.default_rng(0)
    small = (rng.uniform(0, 255, (96, 128, 3))).astype(np.uint8)
    big = small.repeat(2, axis=0).repeat(2, axis=1)  # 192 x 256
    r_small = detect(model, small, score_threshold=0.0)
    r_big = detect(model, Image.fromarray(big), score_threshold=0.0)
    assert len(r_small) > 0 and len(r_big) == len(r_small)
    torch.testing.assert_close(r_big.boxes, 2 * r_small.boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(r_big.scores, r_small.scores, rtol=1e-4, atol=1e-5)
    assert torch.equal(r_big.labels, r_small.labels)
    assert r_big.labels.min() >= 0 and r_big.labels.max() < 3 and r_big.names[0] in TINY_DET_CLASSES
    assert (r_big.boxes[:, 2] <= 256).all() and (r_big.boxes[:, 3] <= 192).all()
    if model.cfg.with_masks:
        assert r_big.masks.shape == (len(r_big), 192, 256) and r_big.masks.dtype == torch.bool
    else:
        assert r_big.masks is None
    threshold = float(r_small.scores.median())
    high = detect(model, small, score_threshold=threshold)
    assert len(high) == int((r_small.scores >= threshold).sum()) and (high.scores >= threshold).all()
    with pytest.raises(ValueError, match="score_threshold"):
        detect(model, small, score_threshold=2.0)
