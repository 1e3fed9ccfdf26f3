"""The training-free benchmark: dataset readers in each released layout, the peers' class names and
protocols, and `python -m train.eval_zeroshot` end to end on synthetic data (random tiny CLIP, offline)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from denseclip.data import (
    CityscapesDataset,
    COCOObjectDataset,
    DatasetError,
    PascalContextDataset,
    PascalVOCDataset,
    peer_class_names,
)
from denseclip.data.peer_names import BACKGROUND_WORDS, DATASETS, PEERS
from denseclip.zeroshot import BACKGROUND
from train import eval_zeroshot as ez

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _label(rng, h, w, hi, ignore=True):
    a = rng.integers(0, hi, (h, w)).astype(np.uint8)
    a[: h // 2, : w // 2] = a[0, 0]  # a block, so that some class is large
    if ignore:
        a[-2:] = 255
    return a


def write_layouts(root: Path, n: int = 2, seed: int = 0) -> Path:
    """n images per dataset, each in its released / mmseg layout (see denseclip.data's readers)."""
    rng = np.random.default_rng(seed)

    def image(h, w):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    ids = [f"2008_00{i}" for i in range(n)]
    for year, masks, lists, hi in (("2012", "SegmentationClass", "ImageSets/Segmentation", 21),
                                   ("2010", "SegmentationClassContext", "ImageSets/SegmentationContext", 60)):
        base = root / f"VOCdevkit/VOC{year}"
        (base / lists).mkdir(parents=True, exist_ok=True)
        (base / lists / "val.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            _save(base / "JPEGImages" / f"{i}.jpg", image(40, 56))
            lab = Image.fromarray(_label(rng, 40, 56, hi), "L")
            if year == "2012":  # VOC's masks are palette PNGs
                lab = lab.convert("P")
            (base / masks).mkdir(parents=True, exist_ok=True)
            lab.save(base / masks / f"{i}.png")
    for i in range(n):
        _save(root / f"coco_stuff164k/images/val2017/{i:012d}.jpg", image(36, 48))
        stuff = root / "coco_stuff164k/annotations/val2017"
        _save(stuff / f"{i:012d}_labelTrainIds.png", _label(rng, 36, 48, 171))
        _save(root / f"cityscapes/leftImg8bit/val/ulm/ulm_{i:06d}_000019_leftImg8bit.png", image(32, 64))
        masks = root / "cityscapes/gtFine/val/ulm"
        _save(masks / f"ulm_{i:06d}_000019_gtFine_labelTrainIds.png", _label(rng, 32, 64, 19))
        ade = root / "ade/ADEChallengeData2016"
        _save(ade / f"images/validation/ADE_val_{i:08d}.jpg", image(40, 48))
        _save(ade / f"annotations/validation/ADE_val_{i:08d}.png", _label(rng, 40, 48, 151, ignore=False))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_layouts(tmp_path_factory.mktemp("zeroshot_data"))


# ------------------------------------------------------------------------------------------ readers
def test_readers_read_each_layout_and_map_labels_as_mmseg(data):
    voc, voc20 = PascalVOCDataset(data, "val"), PascalVOCDataset(data / "VOCdevkit/VOC2012", background=False)
    raw = np.asarray(Image.open(voc.samples[0].label))
    assert len(voc) == 2 and voc.num_classes == 21 and voc20.num_classes == 20
    assert np.array_equal(voc[0]["label"], raw)
    expect = np.where(raw == 0, 255, np.where(raw == 255, 255, raw.astype(np.int64) - 1))  # reduce_zero_label
    assert np.array_equal(voc20[0]["label"], expect)
    ctx, ctx59 = PascalContextDataset(data), PascalContextDataset(data, background=False)
    assert ctx.num_classes == 60 and ctx59.num_classes == 59 and ctx59.class_names[0] == "aeroplane"
    city = CityscapesDataset(data / "cityscapes")
    assert city.num_classes == 19 and city[0]["image"].shape == (32, 64, 3)
    obj = COCOObjectDataset(data / "coco_stuff164k", "val")
    stuff = np.asarray(Image.open(obj.samples[0].label)).astype(np.int64)
    assert obj.from_stuff and obj.num_classes == 81
    assert np.array_equal(obj[0]["label"], np.where(stuff < 80, stuff + 1, 0))  # cvt_coco_object's mapping
    for d in (voc, voc20, ctx, ctx59, city, obj):
        d.validate("full")


def test_coco_object_prefers_converted_masks_and_readers_name_what_is_missing(data, tmp_path):
    root = tmp_path / "coco"
    (root / "images/val2017").mkdir(parents=True)
    _save(root / "images/val2017/000000000001.jpg", np.zeros((8, 8, 3), np.uint8))
    _save(root / "annotations/val2017/000000000001_instanceTrainIds.png", np.full((8, 8), 7, np.uint8))
    obj = COCOObjectDataset(root)
    assert not obj.from_stuff and (obj[0]["label"] == 7).all()
    with pytest.raises(FileNotFoundError, match="VOCdevkit/VOC2012"):
        PascalVOCDataset(tmp_path / "nowhere")
    (tmp_path / "voc/ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "voc/JPEGImages").mkdir()
    (tmp_path / "voc/ImageSets/Segmentation/val.txt").write_text("missing_id\n")
    with pytest.raises(DatasetError, match="missing_id.jpg"):
        PascalVOCDataset(tmp_path / "voc")
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        CityscapesDataset(tmp_path)


# ----------------------------------------------------------------------------- names and protocols
def test_peer_class_names_fit_every_dataset_with_the_peers_synonyms(data):
    sizes = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81, "coco_stuff": 171,
             "cityscapes": 19, "ade20k": 150}
    for peer in PEERS:
        for key in DATASETS:
            names = peer_class_names(peer, key)
            assert len(names) == sizes[key] and all(isinstance(q, tuple) and q for q in names)
    assert peer_class_names("sclip", "voc21")[0] == BACKGROUND_WORDS and len(BACKGROUND_WORDS) == 26
    assert peer_class_names("sclip", "voc21")[15][:2] == ("person", "person in shirt")
    assert peer_class_names("naclip", "ade20k") == peer_class_names("sclip", "ade20k")
    assert ("chestofdrawers",) in peer_class_names("sclip", "ade20k")  # SCLIP's spelling, kept
    assert peer_class_names("clearclip", "voc21")[0] == ("background",)
    assert len(peer_class_names("proxyclip", "coco_object")[0]) == 17
    assert peer_class_names("proxyclip", "voc21")[15] == ("person",)
    with pytest.raises(ValueError, match="peer must be one of"):
        peer_class_names("maskclip", "voc21")


def test_protocols_are_the_peers_configs():
    p = ez.protocol
    assert p("sclip", "voc21") == ez.Protocol(336, 224, 112, 65.0, 0.1, 0.1)
    assert p("sclip", "coco_stuff").short_side == 448 and p("naclip", "cityscapes").short_side == 560
    assert p("naclip", "voc21") == ez.Protocol(336, 224, 112, 40.0, 0.1, None)
    assert p("naclip", "voc20").prob_threshold == 0.0
    assert p("clearclip", "voc21") == ez.Protocol(448, 448, 224, 50.0, 0.5, None)
    assert (p("clearclip", "cityscapes").crop, p("clearclip", "cityscapes").stride) == (224, 224)
    assert p("proxyclip", "coco_object") == ez.Protocol(336, 336, 112, 40.0, 0.25, None)
    assert p("proxyclip", "ade20k").short_side == 448 and p("proxyclip", "cityscapes").crop == 224
    assert ez.peer_of("maskclip") == "naclip" and ez.peer_of("clearclip") == "clearclip"


# ------------------------------------------------------------------------------------------ harness
@pytest.mark.parametrize("pamr", [0, 10])
def test_harness_segment_is_the_librarys_predict(data, pamr):
    """The benchmark measures what predict() serves: same windows, thresholds, synonyms and PAMR."""
    clip, name = ez.build_clip(ez.parse_args(["--tiny"]))
    zs = ez.ZeroShotSegmenter(clip, name, method="sclip", templates="single", logit_scale=30.0,
                              pamr_steps=pamr)
    ds = PascalVOCDataset(data)
    classes = dict(zip(ds.class_names[1:], peer_class_names("sclip", "voc21")[1:]))
    sample = ds[0]
    options = {"background": list(BACKGROUND_WORDS), "size": 48, "max_long_side": 2048, "slide": (32, 16),
               "antialias": False}
    best = zs.predict(sample["image"], classes, **options).probs.amax(0)
    vals = best.flatten().sort().values
    i = len(vals) // 2
    while vals[i + 1] - vals[i] <= 2e-5:
        i += 1
    thr = float(vals[i] + vals[i + 1]) / 2  # some pixels below, none at it
    assert ((best - thr).abs() > 1e-5).all()
    r = zs.predict(sample["image"], classes, threshold=thr, background_on="prob", **options)
    cq = ez.build_queries({"background": BACKGROUND_WORDS, **classes})
    text = zs.encode_text(cq.texts, "single")[list(cq.text_index)]
    rule = ez.LabelRule(cq.num_classes, cq.class_tensor(), thr, "prob", 30.0)
    opts = zs.options(size=48, max_long_side=2048, slide=(32, 16))
    got = ez.segment(zs, sample["image"], text, rule, opts)
    expect = torch.where(r.labels == BACKGROUND, 0, r.labels + 1)
    got = torch.where(got == BACKGROUND, 0, got)
    assert (got == 0).any() and (got > 0).any() and torch.equal(got, expect)


def test_eval_zeroshot_end_to_end_on_every_layout(data, tmp_path):
    methods = ["naclip+pamr", "sclip", "proxyclip"]
    results = ez.main(["--tiny", "--data-root", str(data), "--methods", *methods, "--templates", "single",
                       "--short-side", "48", "--window", "32", "16", "--workers", "0", "--quiet",
                       "--out", str(tmp_path)])
    assert set(results) == set(methods) and all(set(results[m]) == set(ez.ORDER) for m in methods)
    for m in methods:
        for res in results[m].values():
            assert 0 <= res["mIoU"] <= 1 and res["num_images"] == 2 and res["protocol"]["short_side"] == 48
    assert results["sclip"]["voc21"]["protocol"]["area_threshold"] == 0.1
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"]["sclip"]["ade20k"]["mIoU"] == pytest.approx(results["sclip"]["ade20k"]["mIoU"])
    table = (tmp_path / "results.md").read_text()
    assert "| Method | VOC21 | PC60 | Object | VOC20 | City | PC59 | ADE | Stuff | Avg |" in table
    assert "naclip+pamr" in table and "meaningless" in table
    other = ez.main(["--tiny", "--data-root", str(data), "--methods", "naclip", "--datasets", "voc21",
                     "--protocol", "clearclip", "--templates", "single", "--short-side", "48",
                     "--window", "32", "16", "--workers", "0", "--quiet", "--out", str(tmp_path / "other")])
    expect = {"peer": "clearclip", **vars(ez.Protocol(48, 32, 16, 50.0, 0.5))}  # ClearCLIP's scale, threshold
    assert other["naclip"]["voc21"]["protocol"] == expect
    with pytest.raises(SystemExit, match="unknown method"):
        ez.main(["--tiny", "--data-root", str(data), "--methods", "naclip+crf", "--datasets", "voc20",
                 "--quiet", "--out", str(tmp_path)])


@pytest.mark.slow
def test_eval_zeroshot_runs_as_a_module(data, tmp_path):
    out = subprocess.run([sys.executable, "-m", "train.eval_zeroshot", "--tiny", "--data-root", str(data),
                          "--datasets", "voc20", "--max-images", "1", "--short-side", "48",
                          "--window", "32", "16", "--templates", "single", "--quiet", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| naclip |" in out.stdout and (tmp_path / "results.json").is_file()
