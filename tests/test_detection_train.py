"""train/train_det.py and train/eval_det.py end to end on the tiny synthetic COCO-format configs (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
from denseclip.detection import load_detector
from train import eval_det, train_det

RETINANET = str(ROOT / "train/configs/det_tiny_synthetic.yaml")
MASKRCNN = str(ROOT / "train/configs/det_tiny_synthetic_maskrcnn.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(config: str, work: Path, data: Path, *extra: str) -> dict:
    return train_det.main(["--config", config, "--work-dir", str(work), "--data.root", str(data), "--no-progress",
                           "--schedule.epochs", "2", "--schedule.steps", "[1]", "--train.checkpoint_interval", "8",
                           *extra])


def test_train_then_eval_retinanet(tmp_path):
    out = _train(RETINANET, tmp_path / "run", tmp_path / "data")
    assert out["iteration"] == 16  # 2 epochs x ceil(32 images / total batch 4)
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert 0.0 <= metrics["bbox_AP"] <= 1.0 and metrics["num_images"] == 8
    logged = [json.loads(line) for line in (tmp_path / "run/scalars.jsonl").read_text().splitlines()]
    train_logs = [r for r in logged if r["prefix"] == "train"]
    assert {"loss", "loss_aux", "classification", "bbox_regression", "lr", "grad_norm"} <= set(train_logs[0])
    assert train_logs[-1]["lr"] == pytest.approx(1e-4)  # x0.1 after epoch 1
    saved = yaml.safe_load((tmp_path / "run/config.yaml").read_text())["train"]  # epochs -> the engine's iterations
    assert (saved["schedule"], saved["lr_steps"], saved["lr_gamma"], saved["max_iters"]) == ("step", [8], 0.1, 16)
    model = load_detector(tmp_path / "run/final")
    assert model.cfg.name == "denseclip-retinanet-tiny" and not model.training
    res = eval_det.main(["--checkpoint", str(tmp_path / "run/final"), "--config", RETINANET, "--data.root",
                         str(tmp_path / "data"), "--workers", "0", "--out", str(tmp_path / "eval.json")])
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["bbox_AP"] == pytest.approx(metrics["bbox_AP"]) == pytest.approx(res["bbox_AP"])


def test_resume_matches_an_uninterrupted_run(tmp_path):
    _train(RETINANET, tmp_path / "full", tmp_path / "data")
    stopped = _train(RETINANET, tmp_path / "cut", tmp_path / "data", "--stop-at", "8")
    assert stopped == {"stopped_at": 8}
    _train(RETINANET, tmp_path / "cut", tmp_path / "data", "--resume")
    a = load_file(str(tmp_path / "full/final/model.safetensors"))
    b = load_file(str(tmp_path / "cut/final/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_train_maskrcnn_reports_mask_ap(tmp_path):
    _train(MASKRCNN, tmp_path / "run", tmp_path / "data", "--schedule.epochs", "1")
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert 0.0 <= metrics["segm_AP"] <= 1.0 and 0.0 <= metrics["bbox_AP"] <= 1.0


def test_config_errors(tmp_path):
    with pytest.raises(KeyError, match="unknown schedule key"):
        _train(RETINANET, tmp_path / "run", tmp_path / "data", "--schedule.epoch", "1")
    with pytest.raises(ValueError, match="train.schedule: constant"):
        _train(RETINANET, tmp_path / "run", tmp_path / "data", "--train.schedule", "poly")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        _train(RETINANET, tmp_path / "run", tmp_path / "data", "--data.synthetic", "0")
