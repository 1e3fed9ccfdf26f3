"""webapp (the app's logic beside app.py) directly, without Gradio or a server.

What a web user may name as a model, the model cache, the class-box limits, header-based refusal of
images, DenseCLIP's subset-of-classes renormalisation, and the files a request writes.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import denseclip
import webapp as serving
from denseclip.data.transforms import MAX_DECODE_PIXELS
from denseclip.vocab import ADE20K_CLASSES, clean_class_names
from webapp import ModelRegistry, ModelSpec, UserError, image_guard
from webapp import inputs as serving_inputs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "city_street.jpg"


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header says w x h (the pixel data is a stub)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


def rgb_image(h=48, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_webapp_and_the_library_do_not_import_gradio():
    code = "import sys, denseclip, webapp, webapp.image_guard; assert 'gradio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ model names
@pytest.fixture
def ckpt_dir(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "run1").mkdir(parents=True)
    (folder / "run1" / "model.safetensors").write_bytes(b"x")
    (folder / "empty_run").mkdir()
    (folder / "a.safetensors").write_bytes(b"x")
    (folder / "b.pth").write_bytes(b"x")
    (folder / "notes.txt").write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "c.safetensors").write_bytes(b"x")
    (tmp_path / "outside.safetensors").write_bytes(b"x")  # exists, but outside the allow-listed folder
    return folder


def test_allow_listed_folder_lists_its_checkpoints(ckpt_dir):
    reg = ModelRegistry(serving.default_specs(tiny=True), checkpoint_dir=str(ckpt_dir), device="cpu")
    assert reg.labels[:2] == [serving.TINY_ZS, serving.TINY_DC]
    listed = [label for label in reg.labels if label.startswith("DenseCLIP: ")]
    assert listed == ["DenseCLIP: a.safetensors", "DenseCLIP: b.pth", "DenseCLIP: run1"]
    spec = reg.resolve("a.safetensors")
    assert spec == ModelSpec("DenseCLIP: a.safetensors", "denseclip", str(ckpt_dir.resolve() / "a.safetensors"))
    assert reg.resolve("sub/c.safetensors").source == str(ckpt_dir.resolve() / "sub" / "c.safetensors")
    assert reg.resolve("DenseCLIP: run1").source == str(ckpt_dir / "run1")
    assert reg.resolve("") == reg.resolve(None) == reg.specs[serving.TINY_ZS]  # empty: the default model


@pytest.mark.parametrize("name_of", [
    lambda d: str(d / "a.safetensors"),  # absolute, even inside the folder
    lambda d: str(d.parent / "outside.safetensors"),
    lambda d: "../outside.safetensors",
    lambda d: "sub/../a.safetensors",
    lambda d: "~/a.safetensors",
    lambda d: "~",
    lambda d: "sub\\c.safetensors",
    lambda d: "C:\\a.safetensors",
    lambda d: "a.safetensors\x00",
    lambda d: "missing.safetensors",
    lambda d: "/etc/passwd",
])
def test_server_paths_are_refused(ckpt_dir, name_of):
    reg = ModelRegistry(serving.default_specs(tiny=True), checkpoint_dir=str(ckpt_dir), allow_hub=False)
    with pytest.raises(UserError, match="Unknown model") as info:
        reg.resolve(name_of(ckpt_dir))
    assert "checkpoint folder" in str(info.value)


def test_refused_names_are_not_hub_repos_either(ckpt_dir):
    reg = ModelRegistry([], checkpoint_dir=str(ckpt_dir), allow_hub=True)
    for name in ("../outside.safetensors", "a/../../etc", "~/x", "..\\x", "/abs/path"):
        with pytest.raises(UserError, match="Unknown model"):
            reg.resolve(name)


@pytest.mark.parametrize("name,ok", [
    ("user/repo", True), ("User-1/denseclip_rn50.ade20k", True), ("a/b", True),
    ("user", False), ("user/repo/file", False), ("-user/repo", False), ("user/.repo", False),
    ("us er/repo", False), ("user/re..po", False), ("u" * 97 + "/repo", False), ("user/repo\n", True),
])
def test_hub_repo_id_pattern(name, ok):
    reg = ModelRegistry([ModelSpec("x", "zeroshot", "RN50")], allow_hub=True)
    if ok:
        spec = reg.resolve(name)
        assert spec.from_hub and spec.source == name.strip() and spec.kind == "denseclip"
        assert spec.label == f"DenseCLIP: {name.strip()} (Hub)"
    else:
        with pytest.raises(UserError, match="Unknown model"):
            reg.resolve(name)
    reg.allow_hub = False  # turned off: no name is a Hub repo
    with pytest.raises(UserError, match="Unknown model") as info:
        reg.resolve(name)
    assert "Hub" not in str(info.value)


def test_scrub_hides_the_checkpoint_folder(ckpt_dir):
    reg = ModelRegistry([], checkpoint_dir=str(ckpt_dir))
    assert reg.scrub(f"bad file {ckpt_dir.resolve()}/a.pth") == "bad file <checkpoint folder>/a.pth"


def test_hub_checkpoint_offline_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(denseclip.WeightsUnavailableError, match="Hub is unreachable") as info:
        serving.hub_checkpoint_file("someone/denseclip-rn50-ade20k")
    assert "--checkpoint PATH" in str(info.value)


def test_model_cache_keeps_the_most_recently_used(monkeypatch):
    specs = [ModelSpec(name, "zeroshot", name) for name in "ABC"]
    reg = ModelRegistry(specs, max_loaded=2, device="cpu")
    loads = []

    def fake_load(spec):
        loads.append(spec.label)
        return torch.nn.Identity()

    monkeypatch.setattr(reg, "_load", fake_load)
    a = reg.get(specs[0])
    reg.get(specs[1])
    assert reg.get(specs[0]) is a  # cached: A is now the most recently used
    reg.get(specs[2])  # evicts B, the least recently used
    assert [s.label for s in reg._loaded] == ["A", "C"]
    reg.get(specs[1])  # B again: loaded anew, evicts A
    assert loads == ["A", "B", "C", "B"]
    assert [s.label for s in reg._loaded] == ["C", "B"]
    assert ModelRegistry(specs, max_loaded=0).max_loaded == 1


def test_weights_help_and_load_errors(monkeypatch):
    spec = ModelSpec("Zero-shot CLIP RN50 (OpenAI)", "zeroshot", "RN50")
    text = serving.weights_help(spec, RuntimeError("no file"))
    assert "DENSECLIP_WEIGHTS_DIR" in text and "--tiny" in text and text.endswith("Details: no file")
    reg = ModelRegistry([spec], device="cpu")
    monkeypatch.setattr(reg, "_load", lambda s: (_ for _ in ()).throw(denseclip.WeightsUnavailableError("gone")))
    with pytest.raises(UserError, match="is not available. Its weights"):
        serving.load_model(reg, spec)
    monkeypatch.setattr(reg, "_load", lambda s: (_ for _ in ()).throw(KeyError("w")))
    with pytest.raises(UserError, match="Could not load Zero-shot CLIP RN50 .OpenAI.: KeyError"):
        serving.load_model(reg, spec)


# ------------------------------------------------------------------------------------- class names
def test_class_names_are_split_cleaned_and_merged():
    assert serving.parse_class_names("a, b\nc,,\n") == (("a", "b", "c"), [])
    assert serving.parse_class_names(" sky \x07, ro\x00ad ") == (("sky", "road"), [])  # control chars dropped
    assert serving.parse_class_names("", allow_empty=True) == ((), [])
    assert serving.parse_class_names(None, allow_empty=True) == ((), [])
    names, notes = serving.parse_class_names("Sky, sky, tree\nSKY,  tree , cafe\u0301, café")
    assert names == ("Sky", "tree", "café")
    assert notes == ["Merged 4 duplicate class name(s) (kept the first of each): 'sky', 'tree', 'café'."]
    assert serving.parse_class_names("/etc/passwd")[0] == ("/etc/passwd",)  # never read as a file
    assert serving.parse_class_names("ade20k")[0] == ("ade20k",)  # nor as a dataset key


@pytest.mark.parametrize("text,match", [
    ("", "at least one class name"), (" , \n,", "at least one class name"), ("\x00\x07", "at least one class name"),
    ("a" * (serving.MAX_TEXT_CHARS + 1), "the limit is 40,000"),
    ("sky, " + "x" * (serving.MAX_NAME_CHARS + 1), "Class name 2 is 201 characters long"),
    (", ".join(f"c{i}" for i in range(serving.MAX_CLASSES + 1)), "513 class names given; the limit is 512"),
])
def test_class_name_limits(text, match):
    with pytest.raises(UserError, match=match):
        serving.parse_class_names(text)


def test_class_name_limits_are_inclusive():
    assert len(serving.parse_class_names(", ".join(f"c{i}" for i in range(serving.MAX_CLASSES)))[0]) == 512
    assert serving.parse_class_names("x" * serving.MAX_NAME_CHARS)[0] == ("x" * 200,)
    many = ", ".join(["dup"] * 600)  # 600 names, 1 after merging: under the limit
    assert serving.parse_class_names(many)[0] == ("dup",)
    with pytest.raises(UserError, match="must be text"):
        serving.parse_class_names(["a", "b"])


def test_preset_text_round_trips():
    assert len(serving.parse_class_names(serving.preset_text(ADE20K_CLASSES))[0]) == 150
    assert serving.preset_text(["a, b", "c"]) == "a, b\nc"  # a name with a comma: one name a line


# ------------------------------------------------------------------------------------------ images
def test_header_refuses_huge_non_jpeg_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(20000, 20000))
    assert image_guard.image_header(path) == ("PNG", (20000, 20000))
    monkeypatch.setattr(serving_inputs, "load_image", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(UserError, match="20,000x20,000 pixels .400 MP.. PNG images above 50 MP"):
        serving.read_image(path)
    with pytest.raises(image_guard.ImageFileError, match="above 50 MP"):
        image_guard.check_image_file(path, max_pixels=serving.MAX_PIXELS)


def test_header_limit_spares_jpeg(tmp_path):
    Image.fromarray(rgb_image(100, 200)).save(tmp_path / "a.jpg")
    Image.fromarray(rgb_image(100, 200)).save(tmp_path / "a.png")
    assert image_guard.check_image_file(tmp_path / "a.jpg", max_pixels=100) == ("JPEG", (200, 100))
    with pytest.raises(image_guard.ImageFileError, match="200x100 pixels"):
        image_guard.check_image_file(tmp_path / "a.png", max_pixels=100)
    rgb, info = serving.read_image(tmp_path / "a.jpg", max_side=50, max_pixels=100)
    assert rgb.shape == (25, 50, 3)
    assert info == {"name": "a.jpg", "format": "JPEG", "original_size": [100, 200], "size": [25, 50],
                    "downscaled": True}


@pytest.mark.parametrize("data,match", [
    (b"", r"empty \(0 bytes\)"),
    (b"these are notes, not pixels\n" * 10, "not an image"),
    (png_header_only(60000, 60000), f"larger than {MAX_DECODE_PIXELS:,} pixels and cannot be decoded safely"),
])
def test_header_refusals(tmp_path, data, match):
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    with pytest.raises(UserError, match=match):
        serving.read_image(path)


def test_corrupt_image_message_has_no_server_path(tmp_path):
    path = tmp_path / "truncated.jpg"
    path.write_bytes(EXAMPLE.read_bytes()[:4000])
    with pytest.raises(UserError, match="corrupt or truncated") as info:
        serving.read_image(path)
    assert str(tmp_path) not in str(info.value)


def test_exif_rotation_in_the_header(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (80, 40)).save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert image_guard.image_header(tmp_path / "r.jpg") == ("JPEG", (40, 80))
    rgb, info = serving.read_image(tmp_path / "r.jpg")
    assert rgb.shape[:2] == (80, 40) and info["original_size"] == [80, 40] and not info["downscaled"]


# --------------------------------------------------------------------------------------- DenseCLIP
@pytest.fixture(scope="module")
def tiny_denseclip():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return denseclip.build_model("denseclip-tiny-rn", pretrained=False).eval()


def test_match_classes():
    assert serving.match_classes(["sky", "Tree  top", "car", "sky"], ["car", "tree top", "boat", "sky"]) == \
        ([2, 1, 0], ["boat"])


def test_denseclip_subset_is_renormalised(tiny_denseclip):
    rgb = rgb_image()
    names = tiny_denseclip.cfg.class_names  # sky, tree, road, person, car
    full = denseclip.predict(tiny_denseclip, rgb).probs
    pred, notes = serving.run_denseclip(tiny_denseclip, rgb, ("car", "sky", "unicorn"))
    assert pred.names == ("car", "sky") and pred.map_kind == "probability"
    idx = [names.index("car"), names.index("sky")]
    expected = full[idx] / full[idx].sum(0, keepdim=True)
    torch.testing.assert_close(pred.maps, expected)
    torch.testing.assert_close(pred.maps.sum(0), torch.ones(rgb.shape[:2]))
    assert np.array_equal(pred.labels, expected.argmax(0).numpy())
    assert pred.labels.shape == rgb.shape[:2] and set(np.unique(pred.labels)) <= {0, 1}
    assert len(notes) == 1 and "'unicorn'" in notes[0]
    assert pred.info["checkpoint_classes"] == 5


def test_denseclip_all_classes_and_no_match(tiny_denseclip):
    pred, notes = serving.run_denseclip(tiny_denseclip, rgb_image(), ())
    assert pred.names == tuple(tiny_denseclip.cfg.class_names)
    assert notes == ["No class names typed: using all 5 classes of the checkpoint."]
    with pytest.raises(UserError, match="None of the class names"):
        serving.run_denseclip(tiny_denseclip, rgb_image(), ("unicorn",))


def test_denseclip_large_image_is_predicted_small_and_labelled_full_size(tiny_denseclip):
    test = tiny_denseclip.cfg.test
    h, w = test.short_side * 2, test.short_side * 3
    pred, _ = serving.run_denseclip(tiny_denseclip, rgb_image(h, w), ("sky", "road"))
    assert pred.labels.shape == (h, w)
    assert pred.info["working_size"] == [test.short_side, int(test.short_side * 1.5)]


# ----------------------------------------------------------------------------------- the request
@pytest.fixture(scope="module")
def tiny_registry():
    return ModelRegistry(serving.default_specs(tiny=True), device="cpu")


def test_segment_and_render(tiny_registry, tmp_path):
    path = tmp_path / "My photo (1).png"
    Image.fromarray(rgb_image(60, 80)).save(path)
    steps = []
    seg = serving.segment(tiny_registry, str(path), "sky, Sky, road", max_side=40,
                          progress=lambda f, d: steps.append(f))
    assert steps == [0.05, 0.15, 0.3, 0.75]
    assert seg.pred.names == ("sky", "road") and seg.rgb.shape == (30, 40, 3) and seg.opacity == 0.5
    assert any("Merged 1 duplicate" in n for n in seg.notes)
    assert any("(80x60) was downscaled to 40x30" in n for n in seg.notes)
    out = serving.render(seg, tmp_path)
    assert out.label_map.name == "My_photo_1_labels.png" and out.results.name == "My_photo_1_results.json"
    record = json.loads(out.results.read_text("utf-8"))
    assert record == out.record and record["model"] == serving.TINY_ZS and record["untrained"]
    lab = np.asarray(Image.open(out.label_map))
    assert Image.open(out.label_map).mode == "P" and lab.shape == (30, 40)
    assert [c["pixels"] for c in record["classes"]] == np.bincount(lab.ravel(), minlength=2).tolist()
    assert record["info"]["template_set"] == "simple" and record["notes"] == seg.notes
    assert len(out.gallery) == 2 and out.coverage_image.size[0] > 300


@pytest.mark.parametrize("kwargs,match", [
    ({"image": None}, "Upload an image"), ({"image": ""}, "Upload an image"),
    ({"templates": "bogus"}, "templates must be one of auto, single, simple, imagenet"),
    ({"opacity": 1.5}, "opacity must be a number"), ({"opacity": "0.5"}, "opacity must be a number"),
    ({"model": "../etc"}, "Unknown model"),
    ({"class_names": ", ".join(f"t{i}" for i in range(80)), "templates": "imagenet"}, "texts to encode"),
])
def test_segment_refuses_bad_requests(tiny_registry, tmp_path, kwargs, match):
    path = tmp_path / "a.png"
    Image.fromarray(rgb_image()).save(path)
    request = {"image": str(path), "class_names": "sky, road", **kwargs}
    with pytest.raises(UserError, match=match):
        serving.segment(tiny_registry, **request)


def test_single_class_note_and_denseclip_kind(tiny_registry, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(rgb_image()).save(path)
    assert any("Only one class" in n for n in serving.segment(tiny_registry, str(path), "sky").notes)
    seg = serving.segment(tiny_registry, str(path), "", model=serving.TINY_DC)  # empty box allowed here
    assert seg.pred.map_kind == "probability" and len(seg.pred.names) == 5


# ----------------------------------------------------------------------------------------- outputs
def test_label_map_png_encodings():
    palette = serving.class_palette([f"c{i}" for i in range(300)])
    labels = np.arange(300).reshape(15, 20)
    labels[0, 0] = -1  # unlabelled
    png16, enc16 = serving.label_map_image(labels, palette)
    assert png16.mode.startswith("I") and "65535 = unlabelled" in enc16
    assert np.asarray(png16)[0, 0] == 65535 and np.asarray(png16)[-1, -1] == 299
    small = labels % 3
    small[0, 0] = -1
    png8, enc8 = serving.label_map_image(small, palette[:3])
    assert png8.mode == "P" and "255 = unlabelled" in enc8 and np.asarray(png8)[0, 0] == 255


def test_palettes():
    small = serving.class_palette(["a", "b", "c"])
    assert small.shape == (3, 3) and small.dtype == np.uint8 and len({tuple(c) for c in small}) == 3
    assert np.array_equal(serving.class_palette(clean_class_names(ADE20K_CLASSES)), denseclip.viz.make_palette(150))
    assert np.array_equal(serving.class_palette([f"c{i}" for i in range(25)]), denseclip.viz.make_palette(25))


def test_mask_layers_paint_the_rest_into_the_image():
    rgb = np.full((4, 6, 3), 100, np.uint8)
    labels = np.repeat(np.arange(6)[None], 4, 0)
    palette = np.array([[255, 0, 0]] * 6, np.uint8)
    names = [f"c{i}" for i in range(6)]
    base, anns, cmap = serving.mask_layers(rgb, labels, names, palette, range(6), 0.5, display_opacity=0.5,
                                           max_layers=4)
    assert [n for _, n in anns] == names[:4] and list(cmap) == names[:4] and cmap["c0"] == "#ff0000"
    assert all(m.max() == 1.0 for m, _ in anns)  # 0.5 shown at CSS opacity 0.5: full masks
    assert np.array_equal(base[:, :4], rgb[:, :4]) and (base[:, 4:] == [178, 50, 50]).all()
    _, anns, _ = serving.mask_layers(rgb, labels, names, palette, range(6), 0.5)
    assert all(m.max() == 0.5 for m, _ in anns)


def test_output_folders_remove_old_requests(tmp_path):
    folders = serving.OutputFolders(max_age=60)
    old = folders.new()
    os.utime(old, (0, 0))
    fresh = folders.new()
    assert fresh.is_dir() and not old.exists()
