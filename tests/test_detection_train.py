"""train.train_det and train.eval_det end to end on the tiny synthetic COCO-format configs (CPU); the shipped
detection configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import denseclip.config
from denseclip.detection import load_detector
from train import eval_det, train_det
from train.engine.config import TrainConfig, load_run_config
from train.engine.distributed import DistEnv
from train.engine.hub import recipe
from train.train_det import DetTask

ROOT = Path(__file__).resolve().parents[1]

RETINANET = str(ROOT / "train/configs/det_tiny_synthetic.yaml")
MASKRCNN = str(ROOT / "train/configs/det_tiny_synthetic_maskrcnn.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(config: str, work: Path, data: Path, *extra: str) -> dict:
    return train_det.main(["--config", config, "--work-dir", str(work), "--data.root", str(data),
                           "--no-progress", "--schedule.epochs", "2", "--schedule.steps", "[1]",
                           "--train.checkpoint_interval", "8", *extra])


def test_train_then_eval_retinanet(tmp_path):
    out = _train(RETINANET, tmp_path / "run", tmp_path / "data")
    assert out["iteration"] == 16  # 2 epochs x ceil(32 images / total batch 4)
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert 0.0 <= metrics["bbox_AP"] <= 1.0 and metrics["num_images"] == 8
    logged = [json.loads(line) for line in (tmp_path / "run/scalars.jsonl").read_text().splitlines()]
    train_logs = [r for r in logged if r["prefix"] == "train"]
    assert {"loss", "loss_aux", "classification", "bbox_regression", "lr", "grad_norm"} <= set(train_logs[0])
    assert train_logs[-1]["lr"] == pytest.approx(1e-4)  # x0.1 after epoch 1
    saved = yaml.safe_load((tmp_path / "run/config.yaml").read_text())["train"]  # epochs -> iterations
    assert (saved["schedule"], saved["lr_steps"], saved["lr_gamma"], saved["max_iters"]) == (
        "step", [8], 0.1, 16)
    model = load_detector(tmp_path / "run/final")
    assert model.cfg.name == "denseclip-retinanet-tiny" and not model.training
    training = recipe(TrainConfig.from_dict(saved))
    card = str(model.generate_model_card(metrics=metrics, repo_id="u/d", training=training))
    assert "object-detection" in card and 'load_detector("u/d")' in card
    assert "| box AP | box AP50 | box AP75 |" in card
    assert f"| {100 * metrics['bbox_AP']:.1f} |" in card and "lr_steps=[8]" in card and "mIoU" not in card
    # the run's config.yaml names the data (every field written out) and works as the eval config
    res = eval_det.main(["--checkpoint", str(tmp_path / "run/final"), "--config",
                         str(tmp_path / "run/config.yaml"), "--workers", "0",
                         "--out", str(tmp_path / "eval.json")])
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
    with pytest.raises(KeyError, match=r"unknown schedule field\(s\) \['epoch'\].*epochs"):
        _train(RETINANET, tmp_path / "run", tmp_path / "data", "--schedule.epoch", "1")
    with pytest.raises(ValueError, match="train.schedule: constant"):
        _train(RETINANET, tmp_path / "run", tmp_path / "data", "--train.schedule", "poly")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        _train(RETINANET, tmp_path / "run", tmp_path / "data", "--data.synthetic", "0")


DET_CONFIGS = sorted((ROOT / "train" / "configs").glob("det_*.yaml"))


@pytest.mark.parametrize("path", DET_CONFIGS, ids=[p.stem for p in DET_CONFIGS])
def test_shipped_configs_load(path, tmp_path):
    task = DetTask(load_run_config(path, ["--data.root", str(tmp_path)], DetTask.sections), DistEnv())
    model, train, sched = task.cfg["model"], task.cfg["train"], task.cfg["schedule"]
    assert model.use_text == ("_clip_" not in path.stem) and model.with_masks == ("maskrcnn" in path.stem)
    if path.stem.endswith("_coco"):  # the authors' 1x recipe
        assert model.name == path.stem.removeprefix("det_").replace("_", "-")
        assert (sched.epochs, sched.steps, sched.gamma) == (12, (8, 11), 0.1)
        lr = 2e-4 if model.with_masks else 1e-4  # the authors' Mask R-CNN configs use 2e-4
        assert (train.total_batch, train.lr, train.weight_decay, train.backbone_lr_mult, train.grad_clip,
                train.warmup_iters, train.schedule) == (16, lr, 1e-4, 0.1, 0.1, 500, "constant")


def test_model_section_takes_a_preset_and_nested_changes(tmp_path):
    args = ["--data.root", str(tmp_path), "--data.synthetic", "0", "--model.prompt.num_contexts", "4",
            "--model.class_names", "[a, b]"]
    task = DetTask(load_run_config(RETINANET, args, DetTask.sections), DistEnv())
    expected = denseclip.config.get_preset("denseclip-retinanet-tiny").replace(prompt={"num_contexts": 4},
                                                                               class_names=("a", "b"))
    assert task.cfg["model"] == expected and task.cfg["model"].prompt.decoder_width == 32
    with pytest.raises(KeyError, match="num_context"):
        DetTask(load_run_config(RETINANET, [*args, "--model.num_context", "4"], DetTask.sections), DistEnv())
