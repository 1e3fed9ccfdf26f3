"""webapp's models without Gradio: the offered list, what a visitor may name, loading (locks, cache,
availability), and Hub checkpoints (allow-list, size cap before download; offline, metadata faked)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

import denseclip
from webapp import catalog, hub, models
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
    assert reg.resolve("a.safetensors") == ModelSpec("DenseCLIP: a.safetensors", "denseclip",
                                                     str(ckpt_dir.resolve() / "a.safetensors"))
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
                                                       "my-lab/anything", from_hub=True)
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
    monkeypatch.setenv("DENSECLIP_HUB_ALLOW", "lab/")
    monkeypatch.setenv("DENSECLIP_HUB_MAX_MB", "5")
    assert hub.HubAccess.from_env() == hub.HubAccess(("lab/",), 5_000_000)


# ------------------------------------------------------------------------------ Hub checkpoints
@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """The Hub faked: file metadata and downloads recorded; nothing leaves the machine."""
    calls = SimpleNamespace(metadata=[], downloads=[], size=100_000_000, cached=None)

    def metadata(url, timeout=None):
        calls.metadata.append(url)
        return SimpleNamespace(size=calls.size, commit_hash="abc123")

    def download(repo_id, filename, revision=None):
        calls.downloads.append((repo_id, filename, revision))
        path = tmp_path / "model.safetensors"
        path.write_bytes(b"weights")
        return str(path)

    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "get_hf_file_metadata", metadata)
    monkeypatch.setattr(hub, "hf_hub_download", download)
    monkeypatch.setattr(hub, "try_to_load_from_cache", lambda repo, name: calls.cached)
    return calls


def test_hub_size_cap_is_checked_before_downloading(fake_hub):
    access = hub.HubAccess.parse("lab/", max_mb=50)
    with pytest.raises(UserError, match="is 0.1 GB; this server downloads checkpoints up to 0.1 GB"):
        hub.fetch_checkpoint("lab/big", access)
    assert fake_hub.metadata == ["https://huggingface.co/lab/big/resolve/main/model.safetensors"]
    assert fake_hub.downloads == []
    fake_hub.size = 40_000_000
    assert hub.fetch_checkpoint("lab/small", access).read_bytes() == b"weights"
    assert fake_hub.downloads == [("lab/small", "model.safetensors", "abc123")]  # the revision measured
    fake_hub.size = None
    with pytest.raises(UserError, match="does not say how large"):
        hub.fetch_checkpoint("lab/unknown", access)


def test_hub_refusals_before_any_request(fake_hub, tmp_path):
    with pytest.raises(UserError, match="not one of the Hub repos"):
        hub.fetch_checkpoint("stranger/x", hub.HubAccess.parse("lab/"))
    fake_hub.cached = str(tmp_path / "cached.safetensors")
    (tmp_path / "cached.safetensors").write_bytes(b"x" * 2_000_000)
    path = hub.fetch_checkpoint("lab/cached", hub.HubAccess.parse("lab/", max_mb=5))
    assert path.name == "cached.safetensors"
    with pytest.raises(UserError, match="up to 0.0 GB"):
        hub.fetch_checkpoint("lab/cached", hub.HubAccess.parse("lab/", max_mb=1))
    assert fake_hub.metadata == [] and fake_hub.downloads == []


def test_hub_offline_fails_fast_for_the_visitor(fake_hub, monkeypatch, caplog):
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="cannot download it right now") as info:
        hub.fetch_checkpoint("lab/x", hub.HubAccess.parse("lab/"))
    assert time.perf_counter() - t0 < 1 and "HF_HUB_OFFLINE" not in str(info.value)
    assert "HF_HUB_OFFLINE" in caplog.text  # the operator's reason goes to the log


def test_a_download_delays_only_its_own_model(fake_hub, monkeypatch):
    """While one visitor's Hub checkpoint downloads, other models load and serve."""
    release, started = threading.Event(), threading.Event()

    def slow_download(repo_id, filename, revision=None):
        started.set()
        release.wait(10)
        raise OSError("connection reset")

    monkeypatch.setattr(hub, "hf_hub_download", slow_download)
    tiny = ModelSpec(TINY_DC, "denseclip", "tiny", untrained=True)
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
    assert "Downloading lab/big failed" in str(errors[0].value)


# ------------------------------------------------------------------------------------------ loading
def test_cache_keeps_the_most_recently_used(monkeypatch):
    specs = [ModelSpec(name, "zeroshot", name) for name in "ABC"]
    reg = ModelRegistry(specs, max_loaded=2, device="cpu")
    loads = []
    monkeypatch.setattr(reg, "_load", lambda spec: loads.append(spec.label) or torch.nn.Identity())
    a = reg.get(specs[0])
    reg.get(specs[1])
    assert reg.get(specs[0]) is a
    reg.get(specs[2])  # evicts B
    reg.get(specs[1])  # B again: loaded anew, evicts A
    assert loads == ["A", "B", "C", "B"] and [s.label for s in reg._loaded] == ["C", "B"]
    assert ModelRegistry(specs, max_loaded=0).max_loaded == 1


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


def test_unavailable_models_are_marked_before_anyone_asks(monkeypatch, caplog):
    specs = [ModelSpec("ok", "zeroshot", "ok"), ModelSpec("missing", "zeroshot", "RN50")]
    reg = ModelRegistry(specs, device="cpu")

    def load(spec):
        if spec.label == "missing":
            raise denseclip.WeightsUnavailableError("no weights")
        return torch.nn.Identity()

    monkeypatch.setattr(reg, "_load", load)
    assert reg.choices() == [("ok", "ok"), ("missing", "missing")]
    failures = reg.check()
    assert list(failures) == ["missing"] and "DENSECLIP_WEIGHTS_DIR" in failures["missing"]
    assert reg.choices() == [("ok", "ok"), ("missing (unavailable)", "missing")]
    assert "missing: OpenAI CLIP RN50 weights are not on this server" in caplog.text
    assert "Traceback" not in caplog.text
    monkeypatch.setattr(reg, "_load", lambda spec: torch.nn.Identity())  # the operator added the weights
    with pytest.raises(RuntimeError, match="failed to load less than 300 s ago"):  # no retry at once
        reg.get(specs[1])
    reg.retry_after = 0
    reg.get(specs[1])
    assert reg.choices()[1] == ("missing", "missing") and not reg.failures


def test_tiny_models_are_the_same_every_start():
    a, b = models._tiny_model("zeroshot"), models._tiny_model("zeroshot")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.pretrained is None and models._tiny_model("denseclip").cfg.class_names[0] == "sky"
