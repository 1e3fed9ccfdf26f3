"""webapp's models without Gradio: the offered list, what a visitor may name, loading (locks, cache,
availability), and Hub checkpoints (allow-list, size cap before download; offline, metadata faked)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import denseclip
from webapp import catalog, hub, models, pipeline
from webapp.catalog import TINY_DC, TINY_ZS, ModelSpec
from webapp.errors import UserError
from webapp.models import ModelRegistry


def test_webapp_and_the_library_do_not_import_gradio():
    code = "import sys, webapp, webapp.page, denseclip; assert 'gradio' not in sys.modules, 'gradio imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------- catalog
def test_the_default_is_vit_b16_with_a_method_the_segmenter_has(tiny_vit_clip, tiny_rn_clip):
    default = catalog.default_specs(tiny=False)[0]
    assert (default.source, default.method) == ("ViT-B-16", "naclip")
    for m in catalog.ZERO_SHOT_MODELS:  # every offered method exists in the library today
        clip = tiny_vit_clip if m.clip.startswith("ViT") else tiny_rn_clip
        assert denseclip.ZeroShotSegmenter(clip, method=m.method).method == m.method


def test_model_list_order():
    labels = [s.label for s in catalog.default_specs(tiny=True, checkpoints=["runs/a/", "b.pth"])]
    assert labels[:4] == [TINY_ZS, TINY_DC, "DenseCLIP: a", "DenseCLIP: b.pth"]
    assert labels[4:] == [m.label for m in catalog.ZERO_SHOT_MODELS]
    specs = catalog.default_specs(tiny=False, toy=True)
    assert specs[-1].label == catalog.TOY_MODEL.label and specs[-1].pretrained == catalog.TOY
    assert len({s.backbone for s in specs if s.source == "ViT-B-16"}) == 1  # NACLIP and ClearCLIP: one model


# ------------------------------------------------------------------------------------ model names
@pytest.fixture
def ckpt_dir(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "run1").mkdir(parents=True)
    (folder / "run1" / "model.safetensors").write_bytes(b"x")
    (folder / "empty_run").mkdir()
    for name in ("a.safetensors", "b.pth", "notes.txt"):
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "c.safetensors").write_bytes(b"x")
    (tmp_path / "outside.safetensors").write_bytes(b"x")  # exists, but outside the allow-listed folder
    return folder


def test_checkpoint_folder_is_listed_and_named(ckpt_dir):
    reg = ModelRegistry(catalog.default_specs(tiny=True), checkpoint_dir=str(ckpt_dir), device="cpu")
    assert [label for label in reg.labels if label.startswith("DenseCLIP: ")] == \
        ["DenseCLIP: a.safetensors", "DenseCLIP: b.pth", "DenseCLIP: run1"]
    path = str(ckpt_dir.resolve() / "a.safetensors")
    assert reg.resolve("a.safetensors") == ModelSpec("DenseCLIP: a.safetensors", "denseclip", path,
                                                     pretrained=path)
    assert reg.resolve("sub/c.safetensors").source == str(ckpt_dir.resolve() / "sub" / "c.safetensors")
    assert reg.resolve("") == reg.resolve(None) == reg.default == reg.specs[TINY_ZS]


@pytest.mark.parametrize("name_of", [
    lambda d: str(d / "a.safetensors"), lambda d: str(d.parent / "outside.safetensors"),
    lambda d: "../outside.safetensors", lambda d: "sub/../a.safetensors", lambda d: "~/a.safetensors",
    lambda d: "~", lambda d: "sub\\c.safetensors", lambda d: "C:\\a.safetensors",
    lambda d: "a.safetensors\x00",
    lambda d: "missing.safetensors", lambda d: "/etc/passwd",
])
def test_server_paths_are_refused(ckpt_dir, name_of):
    reg = ModelRegistry(catalog.default_specs(tiny=True), checkpoint_dir=str(ckpt_dir))
    name = name_of(ckpt_dir)
    with pytest.raises(UserError, match="Unknown model") as info:
        reg.resolve(name)
    assert str(ckpt_dir) not in str(info.value).replace(name[:80], "")  # only what the visitor typed


def test_hub_repos_only_when_allowed():
    spec = ModelSpec("x", "zeroshot", "RN50")
    with pytest.raises(UserError, match="Unknown model"):  # off by default
        ModelRegistry([spec]).resolve("someone/denseclip-rn50")
    reg = ModelRegistry([spec], hub=hub.HubAccess.parse("my-lab/, friend/denseclip-vitb16"))
    assert reg.resolve("my-lab/anything") == ModelSpec("DenseCLIP: my-lab/anything (Hub)", "denseclip",
                                                       "my-lab/anything", None, "my-lab/anything", True)
    assert reg.resolve("friend/denseclip-vitb16").from_hub
    for name in ("friend/other", "my-lab-2/x", "stranger/denseclip"):
        with pytest.raises(UserError, match="not one of the Hub repos this server loads"):
            reg.resolve(name)
    for name in ("my-lab/../x", "my-lab/a/b", "my-lab", "-my-lab/x"):
        with pytest.raises(UserError):
            reg.resolve(name)


def test_hub_access_parsing(monkeypatch):
    assert not hub.HubAccess().enabled and not hub.HubAccess.parse("").enabled
    access = hub.HubAccess.parse("a/, b/c  d/e", max_mb=10)
    assert access.allow == ("a/", "b/c", "d/e") and access.max_bytes == 10_000_000
    assert access.allows("a/x") and access.allows("b/c") and not access.allows("b/cd")
    for bad in ("a", "a/b/c", "../x", "a/.."):
        with pytest.raises(ValueError, match="not a Hub repo id"):
            hub.HubAccess.parse(bad)
    assert hub.HubAccess.parse(("lab/", "x/y"), 5) == hub.HubAccess(("lab/", "x/y"), 5_000_000)


# ------------------------------------------------------------------------------ Hub checkpoints
@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """The Hub faked under denseclip.hub.hub_file (which the app downloads through): file metadata and
    downloads recorded; nothing leaves the machine."""
    import huggingface_hub

    import denseclip.hub

    calls = SimpleNamespace(metadata=[], downloads=[], size=100_000_000, cached=None, offline=False)

    def metadata(url, timeout=None):
        calls.metadata.append(url)
        return SimpleNamespace(size=calls.size, commit_hash="abc123")

    def download(repo_id, filename, revision=None):
        calls.downloads.append((repo_id, filename, revision))
        path = tmp_path / "model.safetensors"
        path.write_bytes(b"weights")
        return str(path)

    monkeypatch.setattr(denseclip.hub, "_silent_until", 0.0)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: calls.offline)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name, revision=None: calls.cached)
    return calls


def test_hub_size_cap_is_checked_before_downloading(fake_hub):
    access = hub.HubAccess.parse("lab/", max_mb=50)
    with pytest.raises(UserError, match=r"larger than this server loads \(at most 0.1 GB\)"):
        hub.fetch_checkpoint("lab/big", access)
    assert fake_hub.metadata == ["https://huggingface.co/lab/big/resolve/main/model.safetensors"]
    assert fake_hub.downloads == []
    fake_hub.size = 40_000_000
    assert hub.fetch_checkpoint("lab/small", access).read_bytes() == b"weights"
    assert fake_hub.downloads == [("lab/small", "model.safetensors", "abc123")]  # the revision measured
    fake_hub.size = None
    with pytest.raises(UserError, match="does not say its size"):
        hub.fetch_checkpoint("lab/unknown", access)


def test_hub_refusals_before_any_request(fake_hub, tmp_path):
    with pytest.raises(UserError, match="not one of the Hub repos"):
        hub.fetch_checkpoint("stranger/x", hub.HubAccess.parse("lab/"))
    fake_hub.cached = str(tmp_path / "cached.safetensors")
    (tmp_path / "cached.safetensors").write_bytes(b"x" * 2_000_000)
    path = hub.fetch_checkpoint("lab/cached", hub.HubAccess.parse("lab/", max_mb=5))
    assert path.name == "cached.safetensors"
    with pytest.raises(UserError, match="at most 0.0 GB"):
        hub.fetch_checkpoint("lab/cached", hub.HubAccess.parse("lab/", max_mb=1))
    assert fake_hub.metadata == [] and fake_hub.downloads == []


def test_hub_offline_fails_fast_for_the_visitor(fake_hub, caplog):
    fake_hub.offline = True
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="cannot download it right now") as info:
        hub.fetch_checkpoint("lab/x", hub.HubAccess.parse("lab/"))
    assert time.perf_counter() - t0 < 1 and "HF_HUB_OFFLINE" not in str(info.value)
    assert "HF_HUB_OFFLINE" in caplog.text  # the operator's reason goes to the log
    assert fake_hub.metadata == []


def test_a_download_delays_only_its_own_model(fake_hub, monkeypatch):
    """While one visitor's Hub checkpoint downloads, other models load and serve."""
    import huggingface_hub

    release, started = threading.Event(), threading.Event()

    def slow_download(repo_id, filename, revision=None):
        started.set()
        release.wait(10)
        raise OSError("connection reset")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", slow_download)
    tiny = ModelSpec(TINY_DC, "denseclip", "tiny", pretrained=None)
    reg = ModelRegistry([tiny], hub=hub.HubAccess.parse("lab/"), device="cpu")
    remote = reg.resolve("lab/big")
    errors = []
    worker = threading.Thread(target=lambda: errors.append(pytest.raises(UserError, reg.get, remote)))
    worker.start()
    assert started.wait(10)
    t0 = time.perf_counter()
    assert reg.get(tiny) is not None  # loads while the download hangs
    assert time.perf_counter() - t0 < 10 and worker.is_alive()
    release.set()
    worker.join(10)
    assert "cannot download it right now" in str(errors[0].value)


# ------------------------------------------------------------------------------------------ loading
def test_one_model_per_backbone_and_every_listed_model_stays(monkeypatch):
    """NACLIP and ClearCLIP are one loaded ViT-B/16; every listed model stays loaded; models named by
    visitors (checkpoint folder, Hub) share `max_extra` places, the least recently used dropped."""
    specs = catalog.default_specs(tiny=False)
    reg = ModelRegistry(specs, device="cpu", max_extra=1)
    loads = []
    monkeypatch.setattr(reg, "_load", lambda spec: loads.append(spec.source) or torch.nn.Identity())
    models = [reg.get(spec) for spec in specs]
    assert loads == ["ViT-B-16", "RN50", "RN101"] and models[0] is models[1]  # NACLIP, ClearCLIP
    assert all(reg.get(spec) is m for spec, m in zip(specs, models)) and len(loads) == 3  # all kept
    extra = [ModelSpec(f"DenseCLIP: {n}", "denseclip", n, pretrained=n) for n in ("a", "b")]
    first = reg.get(extra[0])
    assert reg.get(extra[0]) is first
    reg.get(extra[1])  # drops a, not a listed model
    assert reg.get(extra[0]) is not first and loads[-3:] == ["a", "b", "a"]
    assert all(reg.get(spec) is m for spec, m in zip(specs, models)) and len(loads) == 6


def test_the_method_and_pamr_are_per_request_options_of_one_model(registry_tiny, tmp_path):
    """Every zero-shot entry on one CLIP tower runs its own method on the same weights."""
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo)
    tower = registry_tiny.get(registry_tiny.specs["tiny naclip"])
    infos = {}
    for label in ("tiny naclip", "tiny clearclip"):
        for refine in (False, True):
            options = pipeline.Options(label, refine_edges=refine)
            seg = pipeline.segment(registry_tiny, str(photo), "sky, road", options)
            infos[label, refine] = seg.pred.info
    assert [infos[k]["method"] for k in infos] == ["naclip", "naclip", "clearclip", "clearclip"]
    assert [infos[k]["pamr_steps"] for k in infos] == [0, 10, 0, 10]
    assert list(registry_tiny._kept.values()) == [tower]  # one model holds the weights
    assert tower.defaults.pamr_steps == 0 and tower.method == "naclip"  # the model is not changed


@pytest.fixture
def registry_tiny():
    spec = ModelSpec("tiny naclip", "zeroshot", "tiny", "naclip", pretrained=None)
    other = ModelSpec("tiny clearclip", "zeroshot", "tiny", "clearclip", pretrained=None)
    return ModelRegistry([spec, other], device="cpu")


def test_concurrent_requests_load_a_model_once(monkeypatch):
    spec = ModelSpec("A", "zeroshot", "A")
    reg = ModelRegistry([spec], device="cpu")
    loads = []

    def slow_load(s):
        loads.append(s.label)
        time.sleep(0.3)
        return torch.nn.Identity()

    monkeypatch.setattr(reg, "_load", slow_load)
    threads = [threading.Thread(target=reg.get, args=(spec,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["A"]


def test_unavailable_models_leave_the_list_until_their_weights_appear(monkeypatch, caplog, tmp_path):
    specs = [ModelSpec("ok", "zeroshot", "tiny", pretrained=None), ModelSpec("missing", "zeroshot", "RN50")]
    reg = ModelRegistry(specs, device="cpu")
    on_disk = {"RN50": False}
    monkeypatch.setattr(models, "weights_on_disk", lambda spec: on_disk.get(spec.source, True))

    def load(spec):
        if spec.label == "missing" and not on_disk["RN50"]:
            raise denseclip.WeightsUnavailableError("no weights")
        return torch.nn.Identity()

    monkeypatch.setattr(reg, "_load", load)
    assert reg.choices() == ["ok", "missing"]
    failures = reg.check()
    assert list(failures) == ["missing"] and "DENSECLIP_WEIGHTS_DIR" in failures["missing"]
    assert reg.choices() == ["ok"] and reg.default.label == "ok"  # visitors see the ready ones only
    assert "missing: OpenAI CLIP RN50 weights are not on this server" in caplog.text
    assert "Traceback" not in caplog.text
    with pytest.raises(RuntimeError, match="failed to load less than 300 s ago"):  # a visitor: no retry
        reg.get(specs[1])
    reg.check()
    assert reg.choices() == ["ok"]  # still missing: not tried again (offline, within retry_after)
    on_disk["RN50"] = True  # the operator put the weights in place
    assert reg.check() == {} and reg.choices() == ["ok", "missing"]


def test_the_toy_model_is_the_default_only_while_no_clip_can_serve(monkeypatch):
    specs = catalog.default_specs(tiny=False, toy=True)
    reg = ModelRegistry(specs, device="cpu")
    monkeypatch.setattr(models, "weights_on_disk", lambda spec: spec.source == catalog.TOY)
    monkeypatch.setattr(reg, "_load", lambda spec: torch.nn.Identity())
    assert reg.default.source == catalog.TOY  # nothing loaded, no CLIP weights: the toy
    reg.get(reg.specs[catalog.TOY_MODEL.label])
    assert reg.default.source == catalog.TOY
    reg.get(specs[2])  # RN50's weights arrived and it loaded
    assert reg.default.label == "CLIP RN50 · MaskCLIP"


def test_tiny_models_are_the_same_every_start():
    a, b = models._tiny_zero_shot(), models._tiny_zero_shot()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.pretrained is None and models._tiny_denseclip().cfg.class_names[0] == "sky"


# ------------------------------------------------------------------------------------------- precision
@pytest.fixture
def tiny_openai_weights(tmp_path, monkeypatch):
    """A tiny open_clip architecture with 'openai' weights in DENSECLIP_WEIGHTS_DIR: the real loading path
    (denseclip.ZeroShotSegmenter.from_pretrained) of the app's zero-shot models, small."""
    import copy
    import json

    import open_clip
    from safetensors.torch import save_file

    from denseclip.config import TINY_VIT_ARCH

    name = "denseclip-app-test-vit"
    (tmp_path / f"{name}.json").write_text(json.dumps(TINY_VIT_ARCH))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    clip = open_clip.CLIP(**copy.deepcopy(TINY_VIT_ARCH), quick_gelu=True)
    weights = {k: v.contiguous() for k, v in clip.state_dict().items()}
    save_file(weights, str(tmp_path / f"{name}-openai.safetensors"))
    monkeypatch.setenv("DENSECLIP_WEIGHTS_DIR", str(tmp_path))
    return name


@pytest.mark.parametrize("fast", [torch.bfloat16, torch.float32])
def test_the_app_runs_the_fast_precision_and_float32_where_bf16_is_slow(tiny_openai_weights, fast,
                                                                        monkeypatch, tmp_path, caplog):
    """dtype "auto": what denseclip.clip.fast_dtype says this CPU computes fast (bfloat16 with AVX512-BF16
    or AMX); a CPU without it (forced here) gets float32. The log says which."""
    import logging

    from PIL import Image

    from denseclip import clip

    monkeypatch.setattr(clip, "fast_dtype", lambda device="cpu": fast)
    spec = ModelSpec("tiny openai", "zeroshot", tiny_openai_weights, "naclip")
    reg = ModelRegistry([spec], device="cpu")
    assert reg.dtype == fast and ModelRegistry([spec], device="cpu", dtype="float32").dtype == torch.float32
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo)
    with caplog.at_level(logging.INFO, logger="webapp.models"):
        seg = pipeline.segment(reg, str(photo), "sky, road")
    name = str(fast).removeprefix("torch.")
    assert seg.pred.info["dtype"] == name and f"computing in {name}" in caplog.text
    assert seg.pred.maps.dtype == torch.float32 and seg.pred.labels.shape == (48, 64)  # scores in float32
