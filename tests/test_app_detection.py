"""The Detect tab: webapp/detection.py without Gradio (the tiny untrained RetinaNet and Mask R-CNN, a saved
detector folder, thresholds, refused images, no detector), boxes / tags / masks on the picture, unique
model names, and /detect through gradio_client on conftest's live tiny app."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_app
from PIL import Image
from test_webapp_inputs import header_only

import denseclip
from denseclip import viz
from webapp import AppConfig, detection, drawing
from webapp.catalog import TINY_DETECTORS, detector_specs
from webapp.detection import NO_DETECTOR, DetectOptions, render_detections
from webapp.errors import UserError
from webapp.models import ModelRegistry
from webapp.outputs import OutputFolders
from webapp.page import detection_status
from webapp.pipeline import Limits

RETINANET, MASK_RCNN = TINY_DETECTORS  # labels
PHOTO = Path(__file__).resolve().parents[1] / "examples" / "coffee.jpg"  # 600x400


@pytest.fixture(scope="module")
def detectors(one_thread):
    return ModelRegistry(detector_specs(tiny=True), device="cpu")


@pytest.fixture(scope="module")
def folders():
    return OutputFolders()


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "Small photo.png"
    Image.open(PHOTO).resize((150, 100)).save(path)
    return path


def run(detectors, folders, image, **options):
    det = detection.detect(detectors, image, DetectOptions(**options))
    return det, render_detections(det, folders.new())


# ------------------------------------------------------------------------------------- tiny detectors
def test_tiny_retinanet_boxes_tags_table_and_json(detectors, folders, small_photo):
    det, out = run(detectors, folders, small_photo, model=RETINANET)
    rec = json.loads(out.results.read_text("utf-8"))
    assert rec == out.record and rec["model"] == RETINANET and rec["pretrained"] is None and not rec["masks"]
    assert rec["classes"] == ["red box", "green ellipse", "blue box"] and rec["detected_at"] == [100, 150]
    dets = rec["detections"]
    assert 0 < len(dets) <= 8 and all(d["score"] >= 0.3 and "mask_fraction" not in d for d in dets)
    assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= 150 and 0 <= y1 < y2 <= 100
    assert [row[:3] for row in out.rows] == [[i + 1, d["name"], f"{d['score']:.2f}"]
                                             for i, d in enumerate(dets)]
    assert all(row[4] == "–" for row in out.rows)
    drawn = np.asarray(Image.open(out.picture).convert("RGB"), np.int16)  # a JPEG: colours within a few
    x1, y1, _, _ = (int(round(v)) for v in dets[-1]["box"])
    colour = np.asarray(Image.new("RGB", (1, 1), dets[-1]["color"]))[0, 0]
    outline = [np.abs(drawn[y, x] - colour).max() for y, x in ((y1 + 1, x1 + 1), (y1, x1))]
    assert min(outline) <= 16  # the box's outline, in its class colour
    status = detection_status(det, out)
    assert status.startswith("Processed in **") and "untrained" in status and "150×100 px" in status
    assert f"{len(dets)} detections scoring 0.30 or more" in status and "red box ×" in status


def test_tiny_mask_rcnn_masks_are_drawn(detectors, folders, small_photo):
    det, out = run(detectors, folders, small_photo, model=MASK_RCNN)
    rec = out.record
    assert rec["masks"] and rec["detections"] and all(d["mask_fraction"] > 0 for d in rec["detections"])
    masks = det.result.masks.numpy()
    assert masks.shape == (len(rec["detections"]), 100, 150)
    r = det.result  # the picture with and without masks: they change the mask pixels, and only those
    captions = [f"{n} {v:.2f}" for n, v in zip(r.names, r.scores.tolist())]
    palette = viz.distinct_palette(len(r.class_names))
    drawn = np.asarray(drawing.draw_detections(det.rgb, r.boxes.numpy(), r.labels.numpy(), captions, palette,
                                               masks), np.int16)
    plain = drawing.draw_detections(det.rgb, r.boxes.numpy(), r.labels.numpy(), captions, palette)
    changed = (drawn != np.asarray(plain, np.int16)).any(-1)
    inside = masks.any(0)
    assert changed[inside].mean() > 0.1 and not changed[~inside].any()  # (tags cover some of them)


def test_threshold_is_respected(detectors, folders, small_photo):
    det, out = run(detectors, folders, small_photo, model=RETINANET, threshold=0.9)
    assert det.result.boxes.shape == (0, 4) and out.record["detections"] == [] and out.rows == []
    assert any("lower the score threshold" in n.text for n in det.notes)
    assert "0 detections scoring 0.90 or more" in detection_status(det, out)
    drawn = np.asarray(Image.open(out.picture).convert("RGB"), np.int16)
    error = np.abs(drawn - np.asarray(Image.open(small_photo).convert("RGB"), np.int16))
    assert error.mean() < 4 and np.percentile(error, 99.9) < 30  # nothing drawn: JPEG noise only
    for bad in (1.5, -0.1, "0.5", True, None):
        with pytest.raises(UserError, match="threshold must be a number from 0 to 1"):
            detection.detect(detectors, small_photo, DetectOptions(RETINANET, bad))


def test_boxes_are_reported_in_the_uploads_pixels(detectors, folders):
    det = detection.detect(detectors, PHOTO, DetectOptions(RETINANET), Limits(max_side=300))
    out = render_detections(det, folders.new())
    assert out.record["detected_at"] == [200, 300] and out.record["image"]["original_size"] == [400, 600]
    assert any("Detected at 300×200 (the upload is 600×400)" in n.text for n in det.notes)
    first = out.record["detections"][0]["box"]
    assert np.allclose(first, det.result.boxes[0].numpy() * 2, atol=0.1)


BAD_IMAGES = {
    "empty.png": (b"", "empty (0 bytes)"),
    "notes.png": (b"these are notes, not pixels\n" * 10, "not an image"),
    "truncated.jpg": (PHOTO.read_bytes()[:3000], "corrupt or truncated"),
    "huge.png": (header_only("PNG", 20000, 20000), "20,000x20,000"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_images_are_refused_like_uploads_to_segment(detectors, tmp_path, name):
    data, match = BAD_IMAGES[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(UserError, match=re.escape(match)) as info:
        detection.detect(detectors, path)
    assert str(tmp_path) not in str(info.value)
    with pytest.raises(UserError, match="Upload an image first"):
        detection.detect(detectors, None)


def test_no_detector_and_unknown_detectors(detectors, small_photo):
    for image in (small_photo, None):
        with pytest.raises(UserError) as info:
            detection.detect(ModelRegistry([]), image)
        assert str(info.value) == NO_DETECTOR and "--detector" not in NO_DETECTOR
    for name in ("/etc/passwd", "../x.pth", "no such detector"):
        with pytest.raises(UserError, match="Unknown model"):
            detection.detect(detectors, small_photo, DetectOptions(name))


# --------------------------------------------------------------------------------- operator detectors
def test_a_saved_detector_folder_is_served(tmp_path, folders, small_photo, one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = denseclip.build_detector("denseclip-retinanet-tiny", pretrained=False)
    denseclip.save_checkpoint(model, tmp_path / "runA" / "final")
    registry = ModelRegistry(detector_specs(False, [str(tmp_path / "runA" / "final")]), device="cpu")
    assert registry.labels == ["final"] and registry.default.pretrained is not None
    det, out = run(registry, folders, small_photo, threshold=0.0)
    assert isinstance(registry.get(registry.default), denseclip.DenseCLIPDetector)
    assert out.record["model"] == "final" and out.record["pretrained"] == str(tmp_path / "runA" / "final")


def test_a_detector_that_cannot_load_is_a_visitor_message(tmp_path, small_photo, caplog):
    registry = ModelRegistry(detector_specs(False, [str(tmp_path / "missing.pth")]), device="cpu")
    with pytest.raises(UserError) as info:
        detection.detect(registry, small_photo)
    message = str(info.value)
    assert message == ("missing.pth is not available on this server right now. Choose another model from "
                       "the list.")
    assert str(tmp_path) in caplog.text  # the operator's reason: in the log
    assert registry.choices() == []  # visitors see the ready models only


# ------------------------------------------------------------------------------------ names are unique
def test_the_app_lists_detectors_with_unique_names():
    app = load_app()
    demo = app.build_app(AppConfig(checkpoints=("a/runA/final", "a/runB/final"),
                                   detectors=("d/runA/final", "d/runB/final")))
    assert demo.registry.labels[:2] == ["DenseCLIP: runA/final", "DenseCLIP: runB/final"]
    assert demo.detectors.labels == ["runA/final", "runB/final"]
    specs = detector_specs(True, ["x/runA/final", "x/runB/final", "x/runA/final"])  # a repeat: one model
    assert [s.label for s in specs] == ["runA/final", "runB/final", *TINY_DETECTORS]
    assert [s.source for s in specs[:2]] == ["x/runA/final", "x/runB/final"] and specs[2].pretrained is None
    config = AppConfig.parse([], {"DENSECLIP_DETECTORS": "x/one.pth, y/two"})
    assert app.build_app(config).detectors.labels == ["one.pth", "two"]
    config = AppConfig.parse(["--detector", "z.pth"], {"DENSECLIP_DETECTORS": "x/one.pth, y/two"})
    assert app.build_app(config).detectors.labels == ["z.pth"]  # the flag wins over the variable


def test_without_a_detector_the_tab_is_hidden():
    app = load_app()
    demo = app.build_app(AppConfig())
    assert demo.detectors.specs == {}
    config = demo.get_config_file()
    tabs = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    assert tabs["detect-tab"]["visible"] is False and tabs["segment-tab"]["visible"] is not False
    tiny = {c["props"].get("elem_id"): c["props"] for c in
            app.build_app(AppConfig(tiny=True)).get_config_file()["components"]}
    assert tiny["detect-tab"]["visible"] is not False and tiny["detector-input"]["value"] == RETINANET
    assert "draws a box, a name and a score" in tiny["detect-intro"]["value"]  # one visitor sentence


# ------------------------------------------------------------------------------------------- drawing
def test_tags_masks_and_colours_on_the_picture():
    rgb = np.full((120, 200, 3), 128, np.uint8)
    boxes = np.array([[20, 40, 120, 110], [30, 50, 60, 80], [130, 0, 195, 60]], float)
    labels = np.array([0, 1, 2])
    palette = viz.distinct_palette(3)
    masks = np.zeros((3, 120, 200), bool)
    masks[0, 40:110, 20:120] = True
    masks[1, 50:80, 30:60] = True  # inside the table's mask: drawn over it (smaller on top)
    img = np.asarray(drawing.draw_detections(rgb, boxes, labels, ["table 0.90", "cup 0.80", "spoon 0.50"],
                                             palette, masks), np.int16)
    tint = lambda k: np.round(128 * (1 - drawing.MASK_OPACITY) + palette[k] * drawing.MASK_OPACITY)  # noqa: E731
    assert np.abs(img[100, 100] - tint(0)).max() <= 1 and np.abs(img[70, 45] - tint(1)).max() <= 1
    assert (img[60, 20] == palette[0]).all()  # the table's box outline, in its class colour
    assert (img[119, 160] == 128).all()  # no mask, no box: the photo
    # tags: above the table's box; the spoon's box touches the top, so its tag goes inside it
    assert (np.abs(img[30:40, 22:60] - palette[0]).max(-1) == 0).any()
    assert (np.abs(img[2:14, 132:190] - palette[2]).max(-1) == 0).mean() > 0.3
    assert drawing.text_colour((255, 255, 200)) == (0, 0, 0)
    assert drawing.text_colour((20, 20, 90)) == (255, 255, 255)


def test_overlapping_tags_move_or_give_way():
    taken = [(0, 0, 50, 12)]
    assert drawing._tag_box((0, 12, 40, 40), (50, 12), (100, 100), taken) == (0, 12, 50, 24)  # inside
    taken.append((0, 12, 50, 24))
    assert drawing._tag_box((0, 12, 40, 40), (50, 12), (100, 100), taken) == (0, 40, 50, 52)  # below
    full = [(0, 0, 100, 100)]
    assert drawing._tag_box((10, 10, 40, 40), (20, 10), (100, 100), full) is None  # the table has it
    assert drawing._tag_box((90, 50, 99, 60), (30, 10), (100, 100), []) == (70, 40, 100, 50)  # in the picture


# ------------------------------------------------------------------------------------ /detect (API)
def detect(client, image, **kw):
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)), api_name="/detect", **kw)


def test_detect_endpoint_returns_picture_json_and_status(app_client, small_image):
    api = app_client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/detect"]
    params = {p["parameter_name"]: p for p in api["parameters"]}
    assert list(params) == ["image", "model", "threshold"]
    assert params["model"]["parameter_default"] == RETINANET
    assert params["threshold"]["parameter_default"] == 0.3 and not params["image"]["parameter_has_default"]
    assert [r["label"] for r in api["returns"]] == ["Detections", "Results (JSON)", "Status"]
    picture, results_json, status = detect(app_client, small_image, model=MASK_RCNN)
    assert Image.open(picture).format == "JPEG" and Image.open(picture).size == (96, 64)
    rec = json.loads(Path(results_json).read_text("utf-8"))
    assert rec["model"] == MASK_RCNN and rec["masks"] and rec["detections"]
    assert rec["box_format"] == "x1, y1, x2, y2 in pixels of the uploaded image"
    assert isinstance(status, str) and "Processed in" in status and "untrained" in status


def test_detect_endpoint_refusals_are_visitor_messages(app_client, small_image, tmp_path):
    from gradio_client.exceptions import AppError

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are notes, not pixels\n" * 10)
    refused = ((bad, {}, "not an image"), (small_image, {"model": "/etc/passwd"}, "Unknown model"),
               (small_image, {"threshold": 2}, "threshold must be a number from 0 to 1"))
    for image, kw, match in refused:
        with pytest.raises(AppError) as info:
            detect(app_client, image, **kw)
        message = str(info.value)
        assert match in message and "Traceback" not in message and "--detector" not in message
    picture, _, status = detect(app_client, small_image, threshold=0.9)  # still serving
    assert "0 detections" in status and Path(picture).is_file()

