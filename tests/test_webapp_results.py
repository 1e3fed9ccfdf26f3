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
from denseclip.checkpoints import write_json
from denseclip.zeroshot import BACKGROUND
from webapp import drawing, likeness, outputs, pipeline, results
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
    assert record == out.record and record["model"] == TINY_ZS and record["pretrained"] is None
    lab = Image.open(out.label_map)
    assert lab.mode == "P" and lab.size == (80, 60)  # at the upload's size, not the 40x30 segmented
    assert record["label_map"]["file"] == out.label_map.name
    assert (record["label_map"]["size"], record["label_map"]["segmented_at"]) == ([60, 80], [30, 40])
    small = np.asarray(lab)[::2, ::2]
    assert np.array_equal(small, np.load(tmp_path / "labels.npy"))  # nearest-neighbour upscaling
    assert [c["pixels"] for c in record["classes"]] == np.bincount(small.ravel(), minlength=2).tolist()
    assert record["info"]["template_set"] == "simple" and record["unit"] == "cosine similarity"
    by_size = sorted(record["classes"], key=lambda c: -c["pixels"])
    expected = [f"{c['name']} · {c['fraction'] * 100:.1f}% of pixels" for c in by_size]
    assert [caption for _, caption in out.gallery] == expected
    assert Image.open(out.segmentation).size == (40, 30)


def test_nothing_here_threshold_and_background(registry, photo):
    """threshold: a share of this picture's range of best scores (0: nothing unlabelled, 1: all but the
    best pixel), so the default never blanks a picture whatever the model's cosine similarities."""
    r = pipeline.segment(registry, str(photo), "sky, road")
    best = r.pred.maps.max(0).values  # (h, w) cosine similarities, at the image size here
    for share in (0.0, 0.5, 1.0):
        options = Options(unmatched="threshold", threshold=share)
        seg = pipeline.segment(registry, str(photo), "sky, road", options)
        cut = float(best.min() + share * (best.max() - best.min()))
        unlabelled = seg.pred.labels == BACKGROUND
        assert np.array_equal(unlabelled, (best < cut).numpy()) and seg.pred.info["threshold_score"] == cut
        assert np.array_equal(seg.pred.labels[~unlabelled], r.pred.labels[~unlabelled])
    assert (seg.pred.labels == BACKGROUND).mean() > 0.99
    bg = pipeline.segment(registry, str(photo), "sky, road", Options(unmatched="background"))
    assert bg.pred.names == ("sky", "road") and bg.pred.info["background"] == "background"
    assert set(np.unique(bg.pred.labels)) <= {-1, 0, 1}
    same = pipeline.segment(registry, str(photo), "sky, background", Options(unmatched="background"))
    assert same.pred.names == ("sky", "background") and (same.pred.labels >= 0).all()
    assert any("is one of your names" in n.text for n in same.notes)


def test_relative_threshold_upsamples_the_best_score():
    labels = torch.zeros(4, 4, dtype=torch.long)
    scores = torch.tensor([[[0.1, 0.3], [0.2, 0.4]], [[0.0, 0.0], [0.0, 0.0]]])  # (K=2, 2, 2)
    out, cut = pipeline.relative_threshold(labels, scores, 0.5)
    assert cut == pytest.approx(0.25)
    assert (out[:, :1] == BACKGROUND).all() and (out[:, 3:] == 0).all()  # the left low, the right high


@pytest.mark.parametrize("options,match", [
    (Options(templates="bogus"), "templates must be one of auto, single, simple, imagenet"),
    (Options(unmatched="maybe"), "unmatched must be one of closest, background, threshold"),
    (Options(opacity=1.5), "opacity must be a number from 0 to 1"), (Options(opacity="0.5"), "opacity"),
    (Options(threshold=True), "threshold must be a number"), (Options(threshold=1.5), "from 0 to 1"),
    (Options(model="../etc"), "Unknown model"), (Options(model=["a"]), "model must be the name of a model"),
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
    palette = denseclip.viz.distinct_palette(300)
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


def test_results_on_disk_stay_within_the_budget(registry, photo, tmp_path):
    folders = outputs.OutputFolders(tmp_path, max_bytes=200_000)
    kept = []
    for _ in range(12):
        folder = folders.new()
        outputs.render(pipeline.segment(registry, str(photo), "sky, road"), folder)
        folders.account(folder)
        (folder / "later.bin").write_bytes(b"x" * 30_000)  # written after `account` (a redraw, a click)
        kept.append(folder)
    folders.new()
    assert folders.total_bytes() <= 200_000 and kept[-1].exists() and not kept[0].exists()


def test_run_folders_of_servers_that_are_gone_are_removed_at_start(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from webapp.outputs import OutputFolders; f = OutputFolders(sys.argv[1]); "
            "(f.new() / 'x.jpg').write_bytes(b'x' * 1000); print(f.root, flush=True); sys.stdin.read()")
    repo = Path(__file__).resolve().parents[1]
    runs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=repo) for _ in range(2)]
    live_root, killed_root = (Path(run.stdout.readline().strip()) for run in runs)
    runs[1].kill()  # no atexit: its files stay behind
    runs[1].wait()
    assert killed_root.exists()
    folders = outputs.OutputFolders(tmp_path)
    assert folders.removed_stale == 1 and not killed_root.exists() and live_root.exists()
    runs[0].communicate("")
    assert not live_root.exists()  # a clean exit removes its own


def test_json_files_hold_valid_json(tmp_path):
    write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": 2}}


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
                           Options(unmatched="threshold", threshold=0.3))
    return outputs.render(seg, tmp_path)


def test_every_class_score_map_is_reachable(result):
    state = result.state
    assert len(result.gallery) == outputs.FIRST_MAPS < len(state["names"])
    hidden = [state["names"][k] for k in state["order"][outputs.FIRST_MAPS:]]
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
    cut = result.record["info"]["threshold_score"]
    assert f"**unlabelled** (best score below {cut:.2f})" in results.at_pixel(state, int(x), int(y))
    assert results.at_pixel(state, 10_000, 0) == ""


def test_recolour_writes_a_new_file_and_legend_rows(result):
    path = results.recolour(result.state, 0.0)
    assert Path(path) != result.segmentation and Path(path).is_file()
    rows, more = results.legend_rows(result.state, rows=3)
    fractions = sorted((c["fraction"] for c in result.record["classes"]), reverse=True)
    assert [round(share, 6) for _, _, share in rows] == fractions[:3] and more == len(fractions) - 3
    rows, more = results.legend_rows(result.state)
    assert len(rows) == len(fractions) and more == 0  # every class, those at 0% too
    Path(result.state["folder"], "labels.npy").unlink()
    with pytest.raises(UserError, match="expired"):
        results.recolour(result.state, 0.5)


# --------------------------------------------------------------------------------- find more like this
def test_find_more_like_this(registry, result, monkeypatch):
    state = result.state
    path, text = likeness.similar_regions(registry, state, 10, 20)
    assert Path(path).is_file() and Image.open(path).size == Image.open(result.gallery[0][0]).size
    assert text.startswith("like the point (10, 20) · cosine similarity")
    emb = np.load(Path(state["folder"]) / likeness.EMBEDDINGS)
    norms = np.linalg.norm(emb.astype(np.float32), axis=0)
    assert emb.dtype == np.float16 and np.allclose(norms, 1, atol=1e-2)  # unit length, float16
    net = registry.get(registry.resolve(state["model"]))
    x = net.working_image(np.load(Path(state["folder"]) / "image.npy"), net.defaults.size)
    grid = (-(-x.shape[2] // 16), -(-x.shape[3] // 16))  # the ViT's patches covering the image
    assert emb.shape == (net.clip.visual.output_dim, *grid)

    def no_model(*args, **kwargs):
        raise AssertionError("the embeddings are kept with the result")

    monkeypatch.setattr(likeness, "dense_embeddings", no_model)
    path2, _ = likeness.similar_regions(registry, state, 50, 40)  # the second click reads them
    assert Path(path2).is_file() and path2 != path
    with pytest.raises(UserError, match="inside the picture"):
        likeness.similar_regions(registry, state, 10_000, 0)


def test_the_clicked_point_is_the_most_similar(registry, result):
    state = result.state
    likeness.similar_regions(registry, state, 0, 0)
    emb = np.load(Path(state["folder"]) / likeness.EMBEDDINGS).astype(np.float32)
    similarity = np.tensordot(emb[:, 0, 0], emb, axes=1)
    assert similarity.argmax() == 0 and similarity.max() == pytest.approx(1.0, abs=1e-2)


def test_presets_fill_the_class_box_and_keep_the_visitors_own_names():
    from webapp.classes import CUSTOM, PRESETS, preset_of, preset_text, switch_preset

    voc = preset_text(PRESETS["Pascal VOC (21)"])
    assert switch_preset("Pascal VOC (21)", "my; names", "") == (voc, "my; names")
    assert preset_of(voc) == "Pascal VOC (21)" and preset_of("my; names") == CUSTOM
    ade = preset_text(PRESETS["ADE20K (150)"])
    assert switch_preset("ADE20K (150)", voc, "my; names") == (ade, "my; names")  # a preset is not saved
    assert switch_preset(CUSTOM, ade, "my; names") == ("my; names", "my; names")
