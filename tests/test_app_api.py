"""The Gradio app through its API (gradio_client against a live local server, tiny untrained models):
what /segment takes and returns (view_api, the README example and the results agree), results, models,
and what a visitor cannot make the server do. Images and class names: test_app_api_inputs.py.

One server for the session (conftest's app_server: `python app.py --tiny` plus a checkpoint folder).
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    CLASSES,
    PHOTO,
    assert_still_serving,
    expect_error,
    load_app,
    results,
    segment,
)
from PIL import Image

from webapp import FIRST_MAPS, TINY_DC, TINY_ZS, AppConfig, UserError
from webapp.page import legend_html

ROOT = Path(__file__).resolve().parents[1]
RETURNS = ["segmentation", "score_maps", "label_map_png", "results_json", "status"]

app = load_app()


# ------------------------------------------------------------------------------------------- the API
def test_view_api_documents_what_predict_returns(app_client, small_image):
    api = app_client.view_api(print_info=False, return_format="dict")
    ep = api["named_endpoints"]["/segment"]
    params = {p["parameter_name"]: p for p in ep["parameters"]}
    assert list(params) == ["image", "class_names", "model", "opacity", "templates", "unmatched", "threshold"]
    assert params["model"]["parameter_default"] == TINY_ZS
    assert not params["image"]["parameter_has_default"] and params["opacity"]["parameter_default"] == 0.5
    assert params["unmatched"]["parameter_default"] == "closest"
    assert [r["label"] for r in ep["returns"]] == ["Segmentation", "Score maps", "Label map (PNG)",
                                                   "Results (JSON)", "Status"]
    assert [r["component"] for r in ep["returns"]] == ["Image", "Gallery", "File", "File", "Markdown"]
    out = segment(app_client, small_image, "sky, road")
    assert len(out) == len(ep["returns"])
    segmentation, score_maps, label_map, results_json, status = out
    assert isinstance(segmentation, str) and Image.open(segmentation).format == "JPEG"  # a file
    assert all(set(g) == {"image", "caption"} for g in score_maps)
    assert Image.open(label_map).format == "PNG" and Image.open(label_map).mode == "P"  # lossless
    assert json.loads(Path(results_json).read_text())["classes"]
    assert isinstance(status, str) and "Processed in" in status
    assert list(api["named_endpoints"]) == ["/segment", "/detect"] and not api["unnamed_endpoints"]


def test_the_readme_example_runs_as_written(app_server, tmp_path):
    """The README's client example, run against this server: its names are view_api's return names."""
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme[readme.index("## The app"):readme.index("### Deploy to Hugging Face Spaces")]
    code = next(block for block in re.findall(r"```python\n(.*?)```", section, re.S) if "/segment" in block)
    unpacked = re.search(r"^(\w[\w, ]*) = c\.predict", code, re.M).group(1)
    assert [n.strip() for n in unpacked.split(",")] == RETURNS
    code = code.replace("http://127.0.0.1:7860/", app_server[1]).replace('"photo.jpg"', repr(str(PHOTO)))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert Image.open(namespace["segmentation"]).size == (600, 400)
    assert json.loads(Path(namespace["results_json"]).read_text())["image"]["name"] == "coffee.jpg"


def test_segment_returns_picture_score_maps_and_files(app_client):
    out = segment(app_client, PHOTO)
    segmentation, gallery, label_png, _, status = out
    names = [n.strip() for n in CLASSES.split(",")]
    res = results(out)
    assert Image.open(segmentation).size == (600, 400)
    fractions = {c["name"]: c["fraction"] for c in res["classes"]}
    captions = [g["caption"].split(" · ")[0] for g in gallery]
    assert len(captions) == FIRST_MAPS and set(captions) <= set(names)  # the largest classes first
    assert [fractions[c] for c in captions] == sorted(fractions.values(), reverse=True)[:FIRST_MAPS]
    for g in gallery:
        w, h = Image.open(g["image"]["path"] if isinstance(g["image"], dict) else g["image"]).size
        assert w > h > 100
    lab = Image.open(label_png)
    assert lab.mode == "P" and lab.size == (600, 400)
    counts = np.bincount(np.asarray(lab).ravel(), minlength=len(names))
    assert [c["pixels"] for c in res["classes"]] == counts.tolist()
    assert [c["name"] for c in res["classes"]] == names and abs(sum(fractions.values()) - 1) < 1e-4
    assert res["pretrained"] is None and res["model"] == TINY_ZS  # the library's word: None = random weights
    assert res["image"]["size"] == [400, 600] and res["label_map"]["file"] == Path(label_png).name
    assert "Processed in **" in status and "untrained" in status


def test_nothing_here_leaves_pixels_unlabelled(app_client, small_image):
    """The threshold is a share of this picture's range of best scores: the default keeps part of the
    picture labelled whatever the model's cosine similarities are (a fixed cosine blanked it)."""
    unlabelled = {}
    for threshold in (0.0, 0.5, 1.0):
        out = segment(app_client, small_image, "sky, road", unmatched="threshold", threshold=threshold)
        res = results(out)
        unlabelled[threshold] = res["unlabelled_fraction"]
        assert res["unmatched"] == "threshold" and res["threshold"] == threshold
        shown = (np.asarray(Image.open(out[2])) == 255).mean()
        assert np.isclose(shown, res["unlabelled_fraction"], atol=1e-3)
    assert unlabelled[0.0] == 0 and 0 < unlabelled[0.5] < 1 and unlabelled[1.0] > 0.99
    lo, hi = results(out)["score_range"]
    assert lo <= results(out)["info"]["threshold_score"] <= hi
    res = results(segment(app_client, small_image, "sky, road", unmatched="background"))
    assert res["info"]["background"] == "background"
    assert [c["name"] for c in res["classes"]] == ["sky", "road"]


def test_tiny_denseclip_from_the_model_list(app_client):
    res = results(segment(app_client, PHOTO, "", model=TINY_DC))
    assert [c["name"] for c in res["classes"]] == ["sky", "tree", "road", "person", "car"]
    assert res["unit"] == "probability" and any("all 5 classes" in n for n in res["notes"])


def test_opacity_sets_the_colour_strength(app_client, small_image):
    plain = np.asarray(Image.open(small_image).convert("RGB"), np.int16)
    diffs = []
    for opacity in (0.0, 0.9):
        out = segment(app_client, small_image, "sky, road", opacity=opacity)
        drawn = np.asarray(Image.open(out[0]), np.int16)
        diffs.append(np.median(np.abs(drawn - plain)))
    assert diffs[0] <= 4 and diffs[1] > 20  # 0: the photo (JPEG; but for the names written on it)


def test_identical_concurrent_requests_each_get_complete_files(app_server, small_image, tmp_path):
    """Every request writes its own files: identical requests at once all download whole files."""
    from gradio_client import Client, handle_file

    outs, errors = [], []

    def run(i):
        try:
            c = Client(app_server[1], verbose=False, download_files=str(tmp_path / str(i)))
            outs.append(c.predict(handle_file(str(small_image)), "sky, road", api_name="/segment"))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(outs) == 6
    first = [Path(p).read_bytes() for p in (outs[0][0], outs[0][2], outs[0][1][0]["image"])]
    for out in outs[1:]:
        assert [Path(p).read_bytes() for p in (out[0], out[2], out[1][0]["image"])] == first


# ------------------------------------------------------------------------------------------------ models
def test_missing_weights_fail_fast_with_a_message_for_visitors(app_client, small_image, tmp_path,
                                                               monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("DENSECLIP_WEIGHTS_DIR", str(tmp_path))  # empty: the weights are nowhere
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.perf_counter()
    message = expect_error(app_client, small_image, model="CLIP RN50 · MaskCLIP",
                           match="not available on this server")
    assert time.perf_counter() - t0 < 15 and "Choose another model" in message
    assert_still_serving(app_client, small_image)


def test_unavailable_models_leave_the_list_and_the_page_says_nothing_for_operators(app_server):
    import httpx

    demo, url = app_server
    registry = demo.registry
    deadline = time.time() + 60
    while len(registry.failures) < 3 and time.time() < deadline:  # the start-up check runs in the background
        time.sleep(0.2)
    choices = registry.choices()
    assert choices[:2] == [TINY_ZS, TINY_DC] and not any(c.startswith("CLIP ") for c in choices)  # no weights
    page = httpx.get(url + "config", timeout=10).text
    for operator_words in ("DENSECLIP_", "--tiny", "HF_HUB_OFFLINE", "server log", "Operator"):
        assert operator_words not in page


@pytest.mark.parametrize("model", ["/etc/passwd", "../tiny-dc.safetensors", "~/x.pth", "a/../../etc/passwd",
                                   "C:\\x.pth", "no such model", "someone/denseclip-rn50-ade20k"])
def test_server_paths_and_hub_repos_are_not_accepted(app_client, small_image, model):
    expect_error(app_client, small_image, model=model, match="Unknown model")  # Hub repos: off by default


def test_checkpoint_from_the_allow_listed_folder(app_client, app_server, small_image):
    assert "DenseCLIP: tiny-dc.safetensors" in app_server[0].registry.labels
    out = segment(app_client, small_image, "Car, sky, unicorn", model="tiny-dc.safetensors")
    res = results(out)
    assert [c["name"] for c in res["classes"]] == ["car", "sky"]  # the checkpoint's spelling, typed order
    assert any("unicorn" in n for n in res["notes"]) and np.asarray(Image.open(out[2])).max() <= 1
    expect_error(app_client, small_image, "unicorn", model="tiny-dc.safetensors", match="None of these names")


def test_pickled_and_broken_checkpoints_are_refused(app_client, small_image, app_checkpoints):
    marker = Path("/tmp/denseclip-app-test-pickle-ran")
    marker.unlink(missing_ok=True)
    message = expect_error(app_client, small_image, model="evil.pth", match="Could not load")
    assert str(app_checkpoints) not in message and not marker.exists()
    expect_error(app_client, small_image, model="garbage.safetensors", match="Could not load")
    assert_still_serving(app_client, small_image)


# ---------------------------------------------------------------------------------------------- security
def test_server_files_are_not_served(app_server):
    import httpx

    for path in ("/etc/passwd", str(ROOT / "app.py"), str(PHOTO)):
        assert httpx.get(f"{app_server[1]}gradio_api/file={path}").status_code in (403, 404), path


def test_image_paths_not_uploaded_are_refused(app_server):
    """A raw API call naming a server file as the image is refused by Gradio before the app sees it."""
    import httpx

    for path in ("/etc/passwd", str(PHOTO)):
        data = [{"path": path, "meta": {"_type": "gradio.FileData"}}, "sky", TINY_ZS, 0.5, "auto",
                "closest", 0.2]
        event = httpx.post(f"{app_server[1]}gradio_api/call/segment", json={"data": data}).json()["event_id"]
        stream = httpx.get(f"{app_server[1]}gradio_api/call/segment/{event}", timeout=30).text
        assert "event: error" in stream and "root:" not in stream  # refused (the wording is Gradio's)


# ------------------------------------------------------------------------------------------ app as code
def test_cli_checkpoints_come_first_and_load(app_checkpoints):
    import denseclip

    demo = app.build_app(AppConfig(checkpoints=(str(app_checkpoints / "tiny-dc.safetensors"),)))
    registry = demo.registry
    assert registry.labels[0] == "DenseCLIP: tiny-dc.safetensors" == registry.default.label
    model = registry.get(registry.default)
    assert isinstance(model, denseclip.DenseCLIP) and registry.get(registry.default) is model


def test_refine_edges_is_a_per_request_option_on_the_same_model(app_server, small_image):
    """The page's "Refine edges" box (not an API parameter): PAMR on the model that served the request
    before, no second model."""
    from webapp import pipeline

    registry = app_server[0].registry
    seg = pipeline.segment(registry, small_image, "sky, road", pipeline.Options(refine_edges=True))
    assert seg.pred.info["pamr_steps"] == pipeline.PAMR_STEPS and seg.pred.info["method"] == "naclip"
    assert any("PAMR" in n.text and not n.loud for n in seg.notes)
    loaded = dict(registry._kept)
    assert pipeline.segment(registry, small_image, "sky, road").pred.info["pamr_steps"] == 0
    assert registry._kept == loaded  # nothing loaded for PAMR
    seg = pipeline.segment(registry, small_image, "", pipeline.Options(TINY_DC, refine_edges=True))
    assert any("zero-shot models only" in n.text for n in seg.notes)
    with pytest.raises(UserError, match="refine_edges must be true or false"):
        pipeline.segment(registry, small_image, "sky", pipeline.Options(refine_edges="yes"))


def test_checkpoints_with_the_same_folder_name_get_different_names():
    from webapp.catalog import ZERO_SHOT_MODELS, default_specs, short_names

    assert short_names(["runs/runA/final", "runs/runB/final", "other.pth"]) == ["runA/final", "runB/final",
                                                                                "other.pth"]
    assert short_names(["a/x/final/", "b/x/final"]) == ["a/x/final", "b/x/final"]
    assert short_names(["final", "runA/final"]) == ["final", "runA/final"]
    assert short_names(["user/model", "lab/model"]) == ["user/model", "lab/model"]  # Hub repos
    labels = [s.label for s in default_specs(False, ["runA/final", "runB/final", "runA/final"])]
    assert labels[:2] == ["DenseCLIP: runA/final", "DenseCLIP: runB/final"]  # the repeat: one model
    assert labels[2:] == [m.label for m in ZERO_SHOT_MODELS]
    demo = app.build_app(AppConfig(checkpoints=("a/runA/final", "a/runB/final")))
    assert demo.registry.labels[:2] == ["DenseCLIP: runA/final", "DenseCLIP: runB/final"]


def test_a_checkpoint_folder_file_does_not_hide_an_operator_checkpoint_of_the_same_name(tmp_path):
    from webapp.catalog import default_specs
    from webapp.models import ModelRegistry

    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "final.safetensors").write_bytes(b"x")
    cli = str(tmp_path / "elsewhere" / "final.safetensors")
    registry = ModelRegistry(default_specs(False, [cli]), checkpoint_dir=str(tmp_path / "dir"))
    assert registry.specs["DenseCLIP: final.safetensors"].source == cli
    folder = registry.specs["DenseCLIP: final.safetensors (checkpoint folder)"]
    assert folder.source == str((tmp_path / "dir" / "final.safetensors").resolve())
    assert registry.resolve("final.safetensors") == folder  # a name typed by a visitor: the folder's file


def test_environment_selects_models_and_hub_access():
    config = AppConfig.parse([], {"DENSECLIP_TINY": "1", "DENSECLIP_HUB_ALLOW": "my-lab/"})
    demo = app.build_app(config)
    assert demo.registry.labels[:2] == [TINY_ZS, TINY_DC] and demo.registry.hub.allows("my-lab/x")
    demo = app.build_app(AppConfig.parse([], {"DENSECLIP_TINY": "0"}))
    assert demo.registry.labels[0] == "CLIP ViT-B/16 · NACLIP" and not demo.registry.hub.enabled


def test_legend_lists_every_class_and_says_what_the_shares_are():
    state = {"names": ["<b>x</b>", "sky", "saucer"], "palette": [[255, 0, 0], [0, 0, 255], [0, 255, 0]],
             "order": [0, 1, 2], "coverage": [0.6, 0.3, 0.0], "range": [0.1, 0.3],
             "unit": "cosine similarity"}
    html = legend_html(state)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html and "width:60.00%" in html
    assert "saucer" in html and "0.0%" in html  # a class at 0% is listed too
    assert "Share of the picture's pixels" in html
    assert "unlabelled (matches none of the names): 10.0%" in html
    assert "linear-gradient" in html and "0.10" in html and "0.30" in html  # the score maps' colour bar
