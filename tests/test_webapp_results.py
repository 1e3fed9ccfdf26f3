"""webapp's requests and results without Gradio: the pipeline (zero-shot with "nothing here", DenseCLIP
subsets), the files a request writes, names on the picture, and reopening a result."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import denseclip
from webapp import drawing, outputs, pipeline, results
from webapp.catalog import TINY_DC, TINY_ZS, default_specs
from webapp.errors import UserError
from webapp.models import ModelRegistry
from webapp.pipeline import Options

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "coffee.jpg"


def rgb_image(h=48, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry(default_specs(tiny=True), device="cpu")


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "My photo (1).png"
    Image.fromarray(rgb_image(60, 80)).save(path)
    return path


# -------------------------------------------------------------------------------------- zero-shot
def test_segment_and_render(registry, photo, tmp_path):
    steps = []
    seg = pipeline.segment(registry, str(photo), "sky; Sky, road", limits=pipeline.Limits(max_side=40),
                           progress=lambda f, d: steps.append(f))
    assert steps == [0.05, 0.15, 0.3, 0.75]
    assert seg.pred.names == ("sky", "road") and seg.rgb.shape == (30, 40, 3)
    assert [n.text for n in seg.notes] == ["Merged 1 repeated class name(s): 'sky'.",
                                           "Segmented at 40×30 (the upload is 80×60)."]
    assert not any(n.loud for n in seg.notes)  # downscaling is a quiet note, not a toast
    out = outputs.render(seg, tmp_path)
    assert out.label_map.name == "My_photo_1_labels.png" and out.results.name == "My_photo_1_results.json"
    record = json.loads(out.results.read_text("utf-8"))
    assert record == out.record and record["model"] == TINY_ZS and record["untrained"]
    lab = Image.open(out.label_map)
    assert lab.mode == "P" and lab.size == (80, 60)  # at the upload's size, not the 40x30 segmented
    assert record["label_map"]["file"] == out.label_map.name
    assert (record["label_map"]["size"], record["label_map"]["segmented_at"]) == ([60, 80], [30, 40])
    small = np.asarray(lab)[::2, ::2]
    assert np.array_equal(small, np.load(tmp_path / "labels.npy"))  # nearest-neighbour upscaling
    assert [c["pixels"] for c in record["classes"]] == np.bincount(small.ravel(), minlength=2).tolist()
    assert record["info"]["template_set"] == "simple" and record["unit"] == "cosine similarity"
    by_size = sorted(record["classes"], key=lambda c: -c["pixels"])
    expected = [f"{c['name']} · {c['fraction'] * 100:.1f}%" for c in by_size]
    assert [caption for _, caption in out.gallery] == expected
    assert Image.open(out.segmentation).size == (40, 30)


def test_nothing_here_threshold_and_background(registry, photo):
    r = pipeline.segment(registry, str(photo), "sky, road")
    scores = r.pred.maps  # (K, h, w) cosine similarities, at the image size here
    middle = float(scores.max(0).values.median())
    options = Options(unmatched="threshold", threshold=middle)
    seg = pipeline.segment(registry, str(photo), "sky, road", options)
    unlabelled = seg.pred.labels == drawing.UNLABELLED
    assert 0.3 < unlabelled.mean() < 0.7  # about half the pixels score below the median best score
    assert np.array_equal(unlabelled, (scores.max(0).values < middle).numpy())
    bg = pipeline.segment(registry, str(photo), "sky, road", Options(unmatched="background"))
    assert bg.pred.names == ("sky", "road") and bg.pred.info["background"] == "background"
    assert set(np.unique(bg.pred.labels)) <= {-1, 0, 1}
    same = pipeline.segment(registry, str(photo), "sky, background", Options(unmatched="background"))
    assert same.pred.names == ("sky", "background") and (same.pred.labels >= 0).all()
    assert any("is one of your names" in n.text for n in same.notes)


def test_unlabelled_is_the_segmenters_background_label(tiny_vit_clip):
    zs = denseclip.ZeroShotSegmenter(tiny_vit_clip, size=64)
    r = zs.predict(rgb_image(), ["a", "b"], background=1.0)  # no cosine similarity reaches 1
    assert (r.labels == drawing.UNLABELLED).all()


@pytest.mark.parametrize("options,match", [
    (Options(templates="bogus"), "templates must be one of auto, single, simple, imagenet"),
    (Options(unmatched="maybe"), "unmatched must be one of closest, background, threshold"),
    (Options(opacity=1.5), "opacity must be a number from 0 to 1"), (Options(opacity="0.5"), "opacity"),
    (Options(threshold=True), "threshold must be a number"), (Options(model="../etc"), "Unknown model"),
])
def test_bad_options(registry, photo, options, match):
    with pytest.raises(UserError, match=match):
        pipeline.segment(registry, str(photo), "sky, road", options)


def test_too_many_prompts_and_no_image(registry, photo):
    with pytest.raises(UserError, match="texts to encode"):
        names = ", ".join(f"t{i}" for i in range(80))
        pipeline.segment(registry, str(photo), names, Options(templates="imagenet"))
    with pytest.raises(UserError, match="Upload an image"):
        pipeline.segment(registry, None, "sky")


def test_unavailable_model_message_is_for_visitors(registry, photo, monkeypatch, caplog):
    spec = registry.specs["CLIP RN50 · MaskCLIP"]
    def missing(spec):
        raise denseclip.WeightsUnavailableError("x")

    monkeypatch.setattr(registry, "_load", missing)
    with pytest.raises(UserError) as info:
        pipeline.segment(registry, str(photo), "sky", Options(model=spec.label))
    message = str(info.value)
    assert message == ("CLIP RN50 · MaskCLIP is not available on this server right now. Choose another "
                       "model from the list.")
    assert "DENSECLIP_WEIGHTS_DIR" in caplog.text and "Traceback" not in caplog.text


# -------------------------------------------------------------------------------------- DenseCLIP
@pytest.fixture(scope="module")
def tiny_denseclip():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return denseclip.build_model("denseclip-tiny-rn", pretrained=False).eval()


def test_denseclip_subset_is_renormalised(tiny_denseclip):
    rgb = rgb_image()
    names = tiny_denseclip.cfg.class_names  # sky, tree, road, person, car
    full = denseclip.predict(tiny_denseclip, rgb).probs
    pred, notes = pipeline.run_denseclip(tiny_denseclip, rgb, ("car", "sky", "unicorn"))
    assert pred.names == ("car", "sky") and pred.unit == "probability"
    idx = [names.index("car"), names.index("sky")]
    expected = full[idx] / full[idx].sum(0, keepdim=True)
    torch.testing.assert_close(pred.maps, expected)
    assert np.array_equal(pred.labels, expected.argmax(0).numpy())
    assert len(notes) == 1 and notes[0].loud and "'unicorn'" in notes[0].text


def test_denseclip_all_classes_no_match_and_large_images(tiny_denseclip, registry, photo):
    pred, notes = pipeline.run_denseclip(tiny_denseclip, rgb_image(), ())
    assert pred.names == tuple(tiny_denseclip.cfg.class_names) and not notes[0].loud
    with pytest.raises(UserError, match="None of these names"):
        pipeline.run_denseclip(tiny_denseclip, rgb_image(), ("unicorn",))
    test = tiny_denseclip.cfg.test
    big = rgb_image(test.short_side * 2, test.short_side * 3)
    pred, _ = pipeline.run_denseclip(tiny_denseclip, big, ("sky",))
    assert pred.labels.shape == (test.short_side * 2, test.short_side * 3)
    assert pred.info["working_size"] == [test.short_side, int(test.short_side * 1.5)]
    seg = pipeline.segment(registry, str(photo), "", Options(model=TINY_DC, unmatched="threshold"))
    assert len(seg.pred.names) == 5 and any(n.loud and "every pixel" in n.text for n in seg.notes)


# ---------------------------------------------------------------------------------------- outputs
def test_label_map_encodings():
    palette = drawing.class_palette([f"c{i}" for i in range(300)])
    labels = np.arange(300).reshape(15, 20)
    labels[0, 0] = -1
    png16, enc16 = outputs.label_map_image(labels, palette)
    assert png16.mode.startswith("I") and "65535 = unlabelled" in enc16 and np.asarray(png16)[0, 0] == 65535
    png8, enc8 = outputs.label_map_image(np.where(labels < 0, -1, labels % 3), palette[:3])
    assert png8.mode == "P" and "255 = unlabelled" in enc8 and np.asarray(png8)[0, 0] == 255


def test_huge_uploads_keep_the_label_map_at_the_segmented_size(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "LABEL_MAP_MAX_PIXELS", 1000)
    path = tmp_path / "big.png"
    Image.fromarray(rgb_image(60, 80)).save(path)
    seg = pipeline.segment(registry, str(path), "sky, road", limits=pipeline.Limits(max_side=40))
    out = outputs.render(seg, tmp_path)
    assert out.record["label_map"]["size"] == out.record["label_map"]["segmented_at"] == [30, 40]


def test_every_request_has_its_own_files(registry, photo):
    folders = outputs.OutputFolders()
    a = outputs.render(pipeline.segment(registry, str(photo), "sky, road"), folders.new())
    b = outputs.render(pipeline.segment(registry, str(photo), "sky, road"), folders.new())
    files_a = {a.segmentation, a.label_map, a.results, *(Path(p) for p, _ in a.gallery)}
    files_b = {b.segmentation, b.label_map, b.results, *(Path(p) for p, _ in b.gallery)}
    assert not files_a & files_b and a.label_map.read_bytes() == b.label_map.read_bytes()
    os.utime(a.folder, (0, 0))
    folders.new()
    assert not a.folder.exists() and b.folder.exists()  # old requests are removed


def test_palettes():
    small = drawing.class_palette(["a", "b", "c"])
    assert small.shape == (3, 3) and len({tuple(c) for c in small}) == 3
    ade = denseclip.vocab.clean_class_names(denseclip.vocab.ADE20K_CLASSES)
    assert np.array_equal(drawing.class_palette(ade), denseclip.viz.make_palette(150))


def test_names_are_written_inside_their_regions():
    labels = np.zeros((120, 200), np.int64)
    labels[:, 120:] = 1
    labels[:8, :8] = 2  # too small for a name
    labels[50:60, 50:60] = -1
    points = drawing.label_points(labels, 3)
    assert set(points) == {0, 1}
    for k, (x, y) in points.items():
        assert labels[y, x] == k
    (x0, _), (x1, _) = points[0], points[1]
    assert 30 < x0 < 90 and 140 < x1 < 180  # deep inside, not at the border
    rgb = np.full((120, 200, 3), 128, np.uint8)
    palette = np.array([[255, 0, 0], [0, 0, 255], [0, 255, 0]], np.uint8)
    plain = np.asarray(drawing.draw_segmentation(rgb, labels, palette, ["sky", "road", "x"], 0.5))
    named = np.asarray(drawing.draw_segmentation(rgb, labels, palette, ["sky", "road", "x"], 0.5, points))
    assert (plain[55, 55] == 128).all()  # unlabelled pixels show the photo
    assert (plain[0, 100] == [192, 64, 64]).all()
    changed = np.argwhere((plain != named).any(-1))
    assert len(changed) > 100 and (named[tuple(changed.T)] == 255).all(-1).any()  # white letters


# ------------------------------------------------------------------------------- reopened results
@pytest.fixture
def result(registry, photo, tmp_path):
    seg = pipeline.segment(registry, str(photo), ", ".join(f"thing {i}" for i in range(15)) + ", sky, road",
                           Options(unmatched="threshold", threshold=0.0))
    return outputs.render(seg, tmp_path)


def test_every_class_score_map_is_reachable(result):
    state = result.state
    assert len(result.gallery) == outputs.MAX_GALLERY < len(state["names"])
    hidden = [state["names"][k] for k in state["order"][outputs.MAX_GALLERY:]]
    for name in hidden:
        path, text = results.score_map(state, name)
        assert Path(path).is_file() and text.startswith(f"{name} · ")
        assert Image.open(path).size == Image.open(result.gallery[0][0]).size
    with pytest.raises(UserError, match="not one of this result's classes"):
        results.score_map(state, "unicorn")
    items, index = results.gallery_with(state, hidden[0])  # put first in the gallery
    assert index == 0 and items[0][1].startswith(hidden[0]) and items[1:] == result.gallery
    shown = state["names"][state["order"][3]]
    items, index = results.gallery_with(state, shown)  # already there: selected
    assert items == result.gallery and index == 3


def test_reading_a_pixel(result):
    state, labels = result.state, np.load(Path(result.state["folder"]) / "labels.npy")
    y, x = np.argwhere(labels >= 0)[0]
    text = results.at_pixel(state, int(x), int(y))
    assert text.startswith(f"At ({x}, {y}): **{state['names'][labels[y, x]]}** · cosine similarity: ")
    y, x = np.argwhere(labels < 0)[0]
    assert "**unlabelled** (below the threshold 0.00)" in results.at_pixel(state, int(x), int(y))
    assert results.at_pixel(state, 10_000, 0) == ""


def test_recolour_writes_a_new_file_and_legend_rows(result):
    path = results.recolour(result.state, 0.0)
    assert Path(path) != result.segmentation and Path(path).is_file()
    rows, more = results.legend_rows(result.state, rows=3)
    fractions = sorted((c["fraction"] for c in result.record["classes"] if c["pixels"]), reverse=True)
    assert [round(share, 6) for _, _, share in rows] == fractions[:3] and more == len(fractions) - 3
    Path(result.state["folder"], "labels.npy").unlink()
    with pytest.raises(UserError, match="expired"):
        results.recolour(result.state, 0.5)
