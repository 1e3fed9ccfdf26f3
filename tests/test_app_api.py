"""The Gradio app through its API (gradio_client against a live local server, tiny untrained models).

One in-process server for the module (launched like `python app.py --tiny`, plus an allow-listed
checkpoint folder holding a tiny DenseCLIP checkpoint). Every bad input must come back as a clear
message, and the next good request must still work.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import tempfile
import time
import zlib
from pathlib import Path

# before gradio is imported anywhere: its upload/cache folder is read at import
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="denseclip-gradio-test-"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import load_app
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "city_street.jpg"
CLASSES = "sky, building, road, car, person"




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


app = load_app()


# ---------------------------------------------------------------------------------------------- fixtures
class Payload:
    """Unpickling this would run code: a checkpoint holding it must be refused (weights_only)."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/denseclip-app-test-pickle-ran",))


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    import denseclip

    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    denseclip.save_checkpoint(denseclip.build_model("denseclip-tiny-rn", pretrained=False), folder / "tiny-dc.safetensors")
    torch.save({"meta": {"CLASSES": ("a", "b")}, "state_dict": {"w": torch.zeros(1)}, "hook": Payload()},
               folder / "evil.pth")
    (folder / "garbage.safetensors").write_bytes(b"\x00" * 64)
    return folder


@pytest.fixture(scope="module")
def server(ckpt_dir):
    demo = app.build_app(tiny=True, checkpoint_dir=str(ckpt_dir))
    _, url, _ = app.serve(demo, "127.0.0.1", free_port(), prevent_thread_lock=True, quiet=True)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    return Client(server[1], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def segment(client, image, classes=CLASSES, **kw):
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)), classes, api_name="/segment", **kw)


def results(out) -> dict:
    return json.loads(Path(out[4]).read_text("utf-8"))


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "small.png"
    Image.open(EXAMPLE).resize((96, 72)).save(path)
    return path


def assert_still_serving(client, small_image):
    out = segment(client, small_image, "sky, road")
    assert [c["name"] for c in results(out)["classes"]] == ["sky", "road"]


def expect_error(client, image, classes=CLASSES, match: str = "", **kw) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        segment(client, image, classes, **kw)
    message = str(info.value)
    assert match.lower() in message.lower(), message
    assert "Traceback" not in message
    return message


# -------------------------------------------------------------------------------------------- happy path
def test_api_lists_the_segment_endpoint(client):
    api = client.view_api(print_info=False, return_format="dict")
    ep = api["named_endpoints"]["/segment"]
    params = [p["parameter_name"] for p in ep["parameters"]]
    assert params[:2] == ["image", "class_names"]
    defaults = {p["parameter_name"]: p for p in ep["parameters"]}
    assert defaults["model"]["parameter_has_default"] and defaults["model"]["parameter_default"] == app.TINY_ZS
    assert defaults["opacity"]["parameter_default"] == 0.5
    assert not defaults["image"]["parameter_has_default"]
    assert len(ep["returns"]) == 6  # overlay, gallery, coverage, label map, JSON, time (the state is not API)


def test_segment_returns_overlay_scoremaps_and_json(client):
    out = segment(client, EXAMPLE)
    overlay, gallery, coverage, label_png, json_file, status = out
    names = [n.strip() for n in CLASSES.split(",")]
    # the labelled overlay: the image, one mask per class present, a colour for each in the legend
    value = overlay["value"]
    assert Image.open(value["image"]).size == (640, 480)
    labels = [a["label"] for a in value["annotations"]]
    assert labels and set(labels) <= set(names)
    assert set(overlay["color_map"]) == set(labels)
    assert all(c.startswith("#") and len(c) == 7 for c in overlay["color_map"].values())
    for a in value["annotations"]:
        assert Image.open(a["image"]).mode == "RGBA"
    # one score map per class (5 <= MAX_GALLERY), largest coverage first, with a colour bar (wider than tall)
    res = results(out)
    assert len(gallery) == 5
    captions = [g["caption"].split(" · ")[0] for g in gallery]
    fractions = {c["name"]: c["fraction"] for c in res["classes"]}
    assert sorted(captions) == sorted(names)
    assert [fractions[c] for c in captions] == sorted(fractions.values(), reverse=True)
    for g in gallery:
        w, h = Image.open(g["image"]).size
        assert w > h > 100
    assert Image.open(coverage).size[0] > 300
    # the label map: palette PNG, value = index into the class list, at the image size
    lab = Image.open(label_png)
    assert lab.mode == "P" and lab.size == (640, 480)
    arr = np.asarray(lab)
    assert arr.max() < len(names)
    counts = np.bincount(arr.ravel(), minlength=len(names))
    assert [c["pixels"] for c in res["classes"]] == counts.tolist()
    # the JSON
    assert [c["name"] for c in res["classes"]] == names
    assert abs(sum(fractions.values()) - 1) < 1e-4
    assert res["untrained"] is True and res["model"] == app.TINY_ZS
    assert res["image"]["size"] == [480, 640] and res["label_map"]["file"] == Path(label_png).name
    assert res["seconds"] > 0 and "model_load" in res["timing"]
    # the time taken, and a warning that the model is untrained
    assert " s** · " in status and "untrained" in status


def test_tiny_denseclip_from_the_model_list(client):
    out = segment(client, EXAMPLE, "", model=app.TINY_DC)
    res = results(out)
    assert [c["name"] for c in res["classes"]] == ["sky", "tree", "road", "person", "car"]
    assert res["map_kind"] == "probability"
    assert any("all 5 classes" in n for n in res["notes"])


def test_opacity_sets_the_mask_alpha(client, small_image):
    alphas = []
    for opacity in (0.0, 0.85):
        overlay = segment(client, small_image, "sky, road", opacity=opacity)[0]
        mask = np.asarray(Image.open(overlay["value"]["annotations"][0]["image"]))
        alphas.append(int(mask[..., 3].max()))
    assert alphas == [0, 255]


# ---------------------------------------------------------------------------------------------- images
def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header says w x h (the pixel data is a stub): must be refused before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


BAD_IMAGES = {
    "empty.png": (b"", "empty (0 bytes)"),
    "notes.png": (b"these are notes, not pixels\n" * 10, "not an image"),
    "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not an image"),
    "truncated.jpg": (EXAMPLE.read_bytes()[:4000], "corrupt or truncated"),
    "huge.png": (png_header_only(20000, 20000), "20,000x20,000"),
    "bomb.png": (png_header_only(60000, 60000), "cannot be decoded safely"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_files_give_a_clear_message(client, small_image, tmp_path, name):
    data, match = BAD_IMAGES[name]
    path = tmp_path / name
    path.write_bytes(data)
    message = expect_error(client, path, match=match)
    assert str(tmp_path) not in message and os.environ["GRADIO_TEMP_DIR"] not in message  # no server paths
    assert_still_serving(client, small_image)


def test_truncated_png_gives_a_clear_message(client, small_image, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expect_error(client, path, match="corrupt or truncated")
    assert_still_serving(client, small_image)


def test_upload_size_limit(server, client, small_image):
    import httpx

    too_big = b"\x00" * (30 * 1024 * 1024 + 1)
    r = httpx.post(server[1] + "gradio_api/upload", files={"files": ("big.png", too_big, "image/png")}, timeout=60)
    assert r.status_code == 413, r.text
    assert_still_serving(client, small_image)


def _make(kind: str, path: Path) -> Path:
    rgb = np.asarray(Image.open(EXAMPLE).resize((160, 120)))
    if kind == "grayscale":
        Image.fromarray(rgb).convert("L").save(path)
    elif kind == "rgba":
        a = np.dstack([rgb, np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))])
        Image.fromarray(a, "RGBA").save(path)
    elif kind == "16-bit":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path)
        assert Image.open(path).mode.startswith("I")
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path, "JPEG")
    elif kind == "palette":
        Image.fromarray(rgb).convert("P").save(path)
    elif kind == "webp":
        Image.fromarray(rgb).save(path, "WEBP")
    return path


@pytest.mark.parametrize("kind,suffix", [("grayscale", "png"), ("rgba", "png"), ("16-bit", "png"),
                                         ("cmyk", "jpg"), ("palette", "gif"), ("webp", "webp")])
def test_any_image_mode_works(client, tmp_path, kind, suffix):
    path = _make(kind, tmp_path / f"{kind}.{suffix}")
    res = results(segment(client, path, "sky, road"))
    assert res["image"]["size"] == [120, 160]
    assert sum(c["pixels"] for c in res["classes"]) == 120 * 160


def test_exif_rotated_photo_is_upright(client, tmp_path):
    img = Image.new("RGB", (80, 40), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes())
    out = segment(client, path, "sky, road")
    res = results(out)
    assert res["image"]["size"] == [80, 40] and res["image"]["original_size"] == [80, 40]
    assert Image.open(out[3]).size == (40, 80)


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    Image.new("L", (20000, 20000), 128).save(path, quality=50)  # ~4.7 MB, decoded at 1/8 scale
    return path


def test_huge_jpeg_is_downscaled(client, huge_jpeg):
    t0 = time.perf_counter()
    out = segment(client, huge_jpeg, "sky, road")
    res = results(out)
    assert res["image"]["original_size"] == [20000, 20000]
    assert max(res["image"]["size"]) == app.MAX_SIDE and res["image"]["downscaled"]
    assert any("downscaled" in n for n in res["notes"])
    assert Image.open(out[3]).size == (app.MAX_SIDE, app.MAX_SIDE)
    assert time.perf_counter() - t0 < 30


def test_large_png_within_the_pixel_limit_is_downscaled(client, tmp_path):
    path = tmp_path / "large.png"
    Image.open(EXAMPLE).resize((2000, 1500), Image.Resampling.NEAREST).save(path, compress_level=1)
    res = results(segment(client, path, "sky, road"))
    assert res["image"]["size"] == [768, 1024] and res["image"]["original_size"] == [1500, 2000]


def test_base64_data_url_images(server, small_image):
    """Images sent inline as data URLs (no upload) take the same checked path."""
    import base64

    import httpx

    url = server[1]
    good = "data:image/png;base64," + base64.b64encode(small_image.read_bytes()).decode()
    for data_url, expected in ((good, "event: complete"), ("data:image/png;base64,!!!!", "empty (0 bytes)"),
                               ("data:image/png;base64," + base64.b64encode(b"GIF89a junk").decode(),
                                "not an image")):
        data = [{"url": data_url, "meta": {"_type": "gradio.FileData"}}, "sky, sea", app.TINY_ZS, 0.5, "auto"]
        event = httpx.post(f"{url}gradio_api/call/segment", json={"data": data}).json()["event_id"]
        stream = httpx.get(f"{url}gradio_api/call/segment/{event}", timeout=60).text
        assert expected in stream, stream[:500]


def test_too_many_prompts_for_one_request(client, small_image):
    names = ", ".join(f"thing {i}" for i in range(80))
    expect_error(client, small_image, names, templates="imagenet", match="texts to encode")
    assert_still_serving(client, small_image)


def test_no_image_is_a_clear_message(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Upload an image"):
        client.predict(None, "sky", api_name="/segment")


# ----------------------------------------------------------------------------------------- class names
@pytest.mark.parametrize("text", ["", "   ", ", ,\n ,", "\x00\x07"])
def test_empty_class_list(client, small_image, text):
    expect_error(client, small_image, text, match="at least one class name")
    assert_still_serving(client, small_image)


def test_duplicates_are_merged_with_a_warning(client, small_image):
    res = results(segment(client, small_image, "sky, Sky, tree\nsky,  tree "))
    assert [c["name"] for c in res["classes"]] == ["sky", "tree"]
    assert any("Merged 3 duplicate" in n for n in res["notes"])


def test_hundreds_of_classes(client, small_image):
    names = [f"object {i}" for i in range(260)]
    out = segment(client, small_image, ", ".join(names))
    res = results(out)
    assert [c["name"] for c in res["classes"]] == names
    assert len(out[1]) == app.MAX_GALLERY
    lab = Image.open(out[3])  # > 255 classes: a 16-bit PNG
    assert lab.mode.startswith("I") and np.asarray(lab).max() < 260
    assert res["info"]["template_set"] == "single"  # "auto": one prompt a class above 40 classes


def test_too_many_classes(client, small_image):
    expect_error(client, small_image, ", ".join(f"c{i}" for i in range(app.MAX_CLASSES + 1)), match="limit is 512")
    assert_still_serving(client, small_image)


def test_unicode_class_names(client, small_image):
    names = ["猫", "🐶 dog", "café", "naïve"]
    decomposed = "cafe\u0301"  # NFD spelling of café: cleaned to NFC
    out = segment(client, small_image, f"猫, 🐶 dog, {decomposed}, naïve")
    res = results(out)
    assert [c["name"] for c in res["classes"]] == names
    assert {g["caption"].split(" · ")[0] for g in out[1]} == set(names)
    assert {a["label"] for a in out[0]["value"]["annotations"]} <= set(names)


def test_very_long_class_name_is_refused(client, small_image):
    expect_error(client, small_image, "sky, " + "very " * 100 + "long", match="characters long")
    assert_still_serving(client, small_image)


def test_class_name_longer_than_the_text_context_is_a_warning(client, small_image):
    res = results(segment(client, small_image, "sky, " + "猫" * 150))
    assert any("truncated" in n for n in res["notes"])


def test_class_box_is_never_read_as_a_file_or_dataset(client, small_image):
    for text in ("/etc/passwd", "ade20k"):
        res = results(segment(client, small_image, text))
        assert [c["name"] for c in res["classes"]] == [text]


def test_huge_class_text_is_refused(client, small_image):
    expect_error(client, small_image, "a" * (app.MAX_TEXT_CHARS + 1), match="characters long")


# ------------------------------------------------------------------------------------------------ models
def test_missing_weights_fail_fast_with_instructions(client, small_image, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("DENSECLIP_WEIGHTS_DIR", str(tmp_path))  # empty: the weights are nowhere
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.perf_counter()
    message = expect_error(client, small_image, model="Zero-shot CLIP RN50 (OpenAI)", match="not available")
    assert time.perf_counter() - t0 < 15
    assert "DENSECLIP_WEIGHTS_DIR" in message and "--tiny" in message
    assert_still_serving(client, small_image)


@pytest.mark.parametrize("model", ["/etc/passwd", "../tiny-dc.safetensors", "~/x.pth", "a/../../etc/passwd",
                                   "C:\\x.pth", "no such model"])
def test_server_paths_are_not_accepted_as_models(client, small_image, model):
    expect_error(client, small_image, model=model, match="Unknown model")


def test_hub_checkpoint_offline_fails_fast(client, small_image):
    t0 = time.perf_counter()
    expect_error(client, small_image, model="someone/denseclip-rn50-ade20k", match="Hub is unreachable")
    assert time.perf_counter() - t0 < 15
    assert_still_serving(client, small_image)


def test_checkpoint_from_the_allow_listed_folder(client, server, small_image):
    registry = server[0].registry
    assert "DenseCLIP: tiny-dc.safetensors" in registry.labels
    out = segment(client, small_image, "Car, sky, unicorn", model="tiny-dc.safetensors")
    res = results(out)
    assert [c["name"] for c in res["classes"]] == ["car", "sky"]  # the checkpoint's spelling, typed order
    assert any("unicorn" in n for n in res["notes"])
    assert np.asarray(Image.open(out[3])).max() <= 1
    expect_error(client, small_image, "unicorn", model="tiny-dc.safetensors", match="None of the class names")


def test_pickled_checkpoint_is_refused(client, small_image, ckpt_dir):
    marker = Path("/tmp/denseclip-app-test-pickle-ran")
    marker.unlink(missing_ok=True)
    message = expect_error(client, small_image, model="evil.pth", match="Could not load")
    assert "weights_only" in message or "Unsupported global" in message, message
    assert str(ckpt_dir) not in message
    assert not marker.exists()
    expect_error(client, small_image, model="garbage.safetensors", match="Could not load")
    assert_still_serving(client, small_image)


# ---------------------------------------------------------------------------------------------- security
def test_server_files_are_not_served(server):
    import httpx

    url = server[1]
    for path in ("/etc/passwd", str(ROOT / "app.py"), str(EXAMPLE)):
        r = httpx.get(f"{url}gradio_api/file={path}")
        assert r.status_code in (403, 404), (path, r.status_code)


def test_image_paths_not_uploaded_are_refused(server):
    """A raw API call naming a server file as the image is refused by Gradio before the app sees it."""
    import httpx

    url = server[1]
    for path in ("/etc/passwd", str(EXAMPLE)):
        data = [{"path": path, "meta": {"_type": "gradio.FileData"}}, "sky", app.TINY_ZS, 0.5, "auto"]
        event = httpx.post(f"{url}gradio_api/call/segment", json={"data": data}).json()["event_id"]
        stream = httpx.get(f"{url}gradio_api/call/segment/{event}", timeout=30).text
        assert "event: error" in stream and "not uploaded by a user" in stream
        assert "root:" not in stream


# ------------------------------------------------------------------------------------------ unit checks
def test_parse_class_names():
    assert app.parse_class_names("a, b\nc,,\n") == (("a", "b", "c"), [])
    assert app.parse_class_names("", allow_empty=True) == ((), [])
    names, notes = app.parse_class_names("Sky, sky")
    assert names == ("Sky",) and "Merged 1 duplicate" in notes[0]


def test_presets_fill_the_class_box():
    text = app.preset_text(app.PRESETS["ADE20K (150)"])
    assert len(app.parse_class_names(text)[0]) == 150
    assert len(app.parse_class_names(app.preset_text(app.PRESETS["COCO-Stuff (171)"]))[0]) == 171


def test_cli_checkpoints_come_first_and_load(ckpt_dir):
    import denseclip

    demo = app.build_app(tiny=False, checkpoints=[str(ckpt_dir / "tiny-dc.safetensors")])
    registry = demo.registry
    assert registry.labels[0] == "DenseCLIP: tiny-dc.safetensors"
    status = next(c for c in demo.config["components"] if c["props"].get("elem_id") == "model-status")
    assert "DenseCLIP: tiny-dc.safetensors** is loaded" in status["props"]["value"]
    model = registry.get(registry.resolve(registry.labels[0]))
    assert isinstance(model, denseclip.DenseCLIP) and model.cfg.class_names[0] == "sky"
    assert registry.get(registry.resolve(registry.labels[0])) is model  # loaded once, cached


def test_env_selects_the_tiny_models(monkeypatch):
    monkeypatch.setenv("DENSECLIP_TINY", "1")
    demo = app.build_app(preload=False)
    assert demo.registry.labels[:2] == [app.TINY_ZS, app.TINY_DC]
    monkeypatch.setenv("DENSECLIP_TINY", "0")
    assert app.build_app(preload=False).registry.labels[0] == "Zero-shot CLIP RN50 (OpenAI)"

