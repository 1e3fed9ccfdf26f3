"""Checkpoints and weights: safetensors round trips, the Hub mixin, CLIP weight sources, fast and helpful
offline errors (also against a Hub that accepts connections but never answers)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import make_clip, randomize_bn

import denseclip
from denseclip.checkpoints import atomic_path
from denseclip.clip import WEIGHTS_DIR_ENV, create_clip, load_clip_state_dict
from denseclip.config import TINY_RN_ARCH, DenseCLIPConfig
from denseclip.hub import WeightsUnavailableError


@pytest.fixture
def trained_tiny():
    model = denseclip.build_model("denseclip-tiny-rn", pretrained=False)
    randomize_bn(model)
    with torch.no_grad():
        model.prompting.gamma.fill_(0.3)
        model.prompting.contexts.normal_()
    return model.eval()


def test_safetensors_file_round_trip_is_exact(tmp_path, trained_tiny):
    path = denseclip.save_checkpoint(trained_tiny, tmp_path / "m.safetensors", metadata={"iter": 7})
    assert path.is_file() and not list(tmp_path.glob("*.tmp"))
    loaded = denseclip.load_checkpoint(path)
    assert not loaded.training and loaded.cfg == trained_tiny.cfg
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained_tiny(x), atol=0, rtol=0)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["iter"] == "7" and json.loads(meta["denseclip_config"])["name"] == "denseclip-tiny-rn"


def test_folder_round_trip_and_class_override(tmp_path, trained_tiny):
    folder = tmp_path / "run"
    denseclip.save_checkpoint(trained_tiny, folder)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    cfg = DenseCLIPConfig.from_dict(json.loads((folder / "config.json").read_text()))
    assert cfg == trained_tiny.cfg
    names = ["water", "grass", "sand", "snow", "rock"]
    loaded = denseclip.load_checkpoint(folder, class_names=names)
    assert loaded.class_names == tuple(names)


def test_checkpoint_is_not_pickle(tmp_path, trained_tiny):
    path = denseclip.save_checkpoint(trained_tiny, tmp_path / "m.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then a JSON header


def test_load_mismatched_checkpoint_names_keys(tmp_path, trained_tiny):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in trained_tiny.state_dict().items()}
    del state["prompting.gamma"]
    meta = {"denseclip_config": trained_tiny.cfg.to_json()}
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="prompting.gamma"):
        denseclip.load_checkpoint(tmp_path / "bad.safetensors")


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        denseclip.load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        denseclip.load_checkpoint(tmp_path / "empty")


def test_hub_repo_offline_fails_fast_with_advice():
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE"):
        denseclip.load_checkpoint("someone/denseclip-rn50")
    assert time.perf_counter() - t0 < 2


STALLED_HUB_SCRIPT = """
import time, denseclip, open_clip
t = time.perf_counter()
for _ in range(2):  # the second request does not wait again
    try:
        denseclip.create_clip("RN50", "openai")
    except denseclip.WeightsUnavailableError as e:
        print(round(time.perf_counter() - t, 2), "DENSECLIP_WEIGHTS_DIR" in str(e))
"""


def test_a_stalled_hub_costs_seconds_once(tmp_path):
    """A Hub that accepts connections and never answers: HF_HUB_ETAG_TIMEOUT bounds the wait, once."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in iter(int, 1)], daemon=True).start()
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}"}
    env.pop(WEIGHTS_DIR_ENV, None)
    out = subprocess.run([sys.executable, "-c", STALLED_HUB_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[1])
    (first, ok1), (second, ok2) = (line.split() for line in out.stdout.split("\n")[:2])
    assert ok1 == ok2 == "True", out.stderr[-2000:]
    assert held, "the Hub was never asked"
    assert float(first) < 10 and float(second) - float(first) < 0.5


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old" and not list(tmp_path.glob("*.tmp"))
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_save_pretrained_from_pretrained_and_model_card(tmp_path, trained_tiny):
    trained_tiny.save_pretrained(tmp_path / "hub")
    assert {p.name for p in (tmp_path / "hub").iterdir()} == {"model.safetensors", "config.json", "README.md"}
    loaded = denseclip.DenseCLIP.from_pretrained(tmp_path / "hub")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), trained_tiny(x), atol=0, rtol=0)
    metrics = {"aAcc": 0.9, "mIoU": 0.5, "mAcc": 0.6}
    card = trained_tiny.generate_model_card(metrics=metrics, repo_id="me/tiny", training={"lr": 1e-4})
    from huggingface_hub import ModelCard

    parsed = ModelCard(str(card))
    assert parsed.data.library_name == "denseclip" and "semantic-segmentation" in parsed.data.tags
    assert 'load_checkpoint("me/tiny")' in parsed.text and "| 90.00 | 50.00 | 60.00 |" in parsed.text
    assert "lr=0.0001" in parsed.text


def test_create_clip_tag_offline_fails_fast_and_says_how(monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as e:
        create_clip("RN50", "openai")
    assert time.perf_counter() - t0 < 15
    assert WEIGHTS_DIR_ENV in str(e.value) and "pretrained=None" in str(e.value)


def test_unsupported_text_towers_are_refused():
    with pytest.raises(ValueError, match="custom text tower"):
        create_clip("ViT-B-16-SigLIP", None)


def test_create_clip_bad_tag_and_model():
    with pytest.raises(ValueError, match="available"):
        create_clip("RN50", "no-such-tag")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        create_clip("RN5000", None)
    with pytest.raises(FileNotFoundError, match="not found"):
        create_clip("RN50", "/no/such/file.pt")


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_create_clip_from_local_file(tmp_path, fmt):
    src = make_clip(TINY_RN_ARCH)
    randomize_bn(src)
    path = tmp_path / f"tiny.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    clip = create_clip("tiny", str(path), arch=TINY_RN_ARCH)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(clip.state_dict()[k], v)
    assert set(load_clip_state_dict(path)) == set(src.state_dict())


def test_create_clip_from_weights_dir(tmp_path, monkeypatch):
    """A tag is served from DENSECLIP_WEIGHTS_DIR before the Hub is asked."""
    import open_clip

    cfg_path = tmp_path / "tinyrn-dc.json"
    cfg_path.write_text(json.dumps(TINY_RN_ARCH))
    open_clip.add_model_config(str(cfg_path))
    src = open_clip.create_model("tinyrn-dc", pretrained=None, force_quick_gelu=True)
    from safetensors.torch import save_file

    wdir = tmp_path / "weights"
    wdir.mkdir()
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(wdir / "tinyrn-dc-openai.safetensors"))
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(wdir))
    clip = create_clip("tinyrn-dc", "openai")
    torch.testing.assert_close(clip.visual.attnpool.c_proj.weight, src.visual.attnpool.c_proj.weight)


def test_create_clip_quick_gelu_flag(tiny_rn_clip):
    from open_clip.transformer import QuickGELU

    q = create_clip("x", None, arch=TINY_RN_ARCH, quick_gelu=True)
    g = create_clip("x", None, arch=TINY_RN_ARCH, quick_gelu=False)
    assert isinstance(q.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert not isinstance(g.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_build_model_pretrained_offline_is_clear():
    with pytest.raises(WeightsUnavailableError):
        denseclip.build_model("denseclip-rn50-ade20k")  # OpenAI RN50 weights, hub unreachable in tests


def test_each_task_has_its_own_loader(tmp_path, trained_tiny):
    from denseclip.detection import DenseCLIPDetector, build_detector

    det = build_detector("denseclip-retinanet-tiny", pretrained=False).eval()
    denseclip.save_checkpoint(det, tmp_path / "det")
    loaded = denseclip.load_detector(tmp_path / "det")
    assert isinstance(loaded, DenseCLIPDetector) and loaded.cfg == det.cfg
    for k, v in det.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    with pytest.raises(ValueError, match="load_detector"):
        denseclip.load_checkpoint(tmp_path / "det")
    denseclip.save_checkpoint(trained_tiny, tmp_path / "seg")
    with pytest.raises(ValueError, match="load_checkpoint"):
        denseclip.load_detector(tmp_path / "seg")


def test_lazy_public_names():
    assert denseclip.detect.__module__.startswith("denseclip.detection")
    assert denseclip.ZeroShotSegmenter.__module__ == "denseclip.zeroshot"
    with pytest.raises(AttributeError):
        denseclip.no_such_name  # noqa: B018
