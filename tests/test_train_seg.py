"""train.train_seg / train.eval_seg end to end on CPU with the tiny preset and the synthetic task:
learning, metrics files, exact resume after an interruption (a debug stop and a real SIGKILL),
torchrun with 2 processes (gloo) against one process, and the errors raised before training."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from denseclip.data.base import DatasetError
from denseclip.data.synthetic import SyntheticSegDataset, write_folder_dataset
from denseclip.metrics import SegMetric
from train import eval_seg, train_seg

ROOT = Path(__file__).resolve().parents[1]

TINY = str(ROOT / "train" / "configs" / "tiny_synthetic.yaml")
# 12 iterations at a total batch of 4 = 2 images x 2 accumulation steps; 20 images, so epochs turn over
SHORT = ["--config", TINY, "--no-progress", "--train.max_iters", "12", "--train.total_batch", "4",
         "--train.batch_size", "2", "--data.synthetic_train_length", "20", "--data.val_split", "none",
         "--train.log_interval", "4", "--train.checkpoint_interval", "4", "--train.keep_checkpoints", "5"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(work: Path, sub: str = "final") -> dict[str, torch.Tensor]:
    return load_file(str(work / sub / "model.safetensors"))


def _assert_same_weights(a: dict, b: dict, atol: float = 1e-6, params_only: bool = False) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if params_only and ("running_" in k or "num_batches_tracked" in k):
            continue
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0), f"{k} differs"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted SHORT run every interrupted one must reproduce."""
    work = tmp_path_factory.mktemp("reference")
    train_seg.main([*SHORT, "--work-dir", str(work)])
    return work


def test_end_to_end_learns_and_writes_metrics(tmp_path):
    work = tmp_path / "e2e"
    res = train_seg.main(["--config", TINY, "--work-dir", str(work), "--no-progress", "--train.max_iters",
                          "60", "--train.log_interval", "10", "--train.checkpoint_interval", "30"])
    logged = [json.loads(line) for line in (work / "scalars.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if r["prefix"] == "train"]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    assert all(r["images_per_s"] > 0 and r["memory_mb"] > 0 for r in logged if r["prefix"] == "train")

    # trivial baseline: predict the most frequent class everywhere
    val = SyntheticSegDataset(16, seed=0, offset=10**6)
    labels = [val[i]["label"] for i in range(len(val))]
    majority = int(np.bincount(np.concatenate([lab.ravel() for lab in labels])).argmax())
    base = SegMetric(5)
    base.update([np.full_like(lab, majority) for lab in labels], labels)
    baseline = base.compute()["mIoU"]
    assert res["mIoU"] > max(2 * baseline, 0.15), (res["mIoU"], baseline)

    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["iteration"] == 60 and metrics["mIoU"] == pytest.approx(res["mIoU"])
    assert set(metrics["per_class"]) == {"sky", "tree", "road", "person", "car"}
    assert all((work / sub / "model.safetensors").is_file() for sub in ("final", "best"))
    assert (work / "config.yaml").is_file() and list((work / "tb").glob("events.out.tfevents.*"))

    # eval_seg on the final model reproduces the number and writes metrics.json
    out = tmp_path / "eval" / "metrics.json"
    ev = eval_seg.main(["--checkpoint", str(work / "final"), "--config", TINY, "--out", str(out),
                        "--workers", "0"])
    assert ev["mIoU"] == pytest.approx(res["mIoU"], abs=1e-9)
    written = json.loads(out.read_text())
    assert written["num_images"] == 16 and len(written["IoU"]) == 5 and written["test"]["mode"] == "whole"
    # the run's config.yaml (every field written out) works as the eval config
    flip = eval_seg.main(["--checkpoint", str(work / "final"), "--config", str(work / "config.yaml"),
                          "--out", str(out), "--workers", "0", "--mode", "slide", "--crop", "48",
                          "--stride", "32", "--flip"])
    assert flip["test"]["flip"] and flip["test"]["mode"] == "slide" and 0 <= flip["mIoU"] <= 1
    # without --out the evaluation goes next to the checkpoint under its own name: the run's summary stays
    summary = (work / "final" / "metrics.json").read_text()
    eval_seg.main(["--checkpoint", str(work / "final"), "--config", TINY, "--workers", "0",
                   "--max-images", "2"])
    assert (work / "final" / "metrics.json").read_text() == summary
    assert json.loads((work / "final" / "eval_metrics.json").read_text())["num_images"] == 2


def test_stop_and_resume_equals_uninterrupted(tmp_path, reference_run):
    stop = random.Random(1234).randint(5, 11)  # an arbitrary iteration between checkpoints 4 and 12
    work = tmp_path / "interrupted"
    out = train_seg.main([*SHORT, "--work-dir", str(work), "--stop-at", str(stop)])
    assert out == {"stopped_at": stop} and not (work / "final").exists()
    # resume with dataloader workers this time: the data order must not depend on them
    train_seg.main([*SHORT, "--work-dir", str(work), "--resume", "--train.workers", "1"])
    _assert_same_weights(_weights(reference_run), _weights(work))
    log = (work / "log.txt").read_text()
    assert f"at iteration {4 * (stop // 4)}" in log


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(tmp_path, reference_run):
    work = tmp_path / "killed"
    cmd = [sys.executable, "-m", "train.train_seg", *SHORT, "--work-dir", str(work),
           "--train.checkpoint_interval", "2"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = work / "checkpoints" / "iter_0000006" / "state.pt"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert not (work / "final").exists()
    train_seg.main([*SHORT, "--work-dir", str(work), "--resume", str(work)])
    _assert_same_weights(_weights(reference_run), _weights(work))


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 ranks x batch 2 (DDP, gloo) == 1 process x batch 2 x 2 accumulation steps, at total batch 4.

    Both see the same images in the same micro-batches (the sampler assigns slot m * world + rank) and
    the same dropout masks (the model RNG is seeded per slot), and BatchNorm normalises each 2-image
    micro-batch with its own statistics in both cases. So every *parameter* agrees. The BN running
    statistics agree too with train.bn_stats: all (each rank replays every rank's micro-batch statistics
    in slot order; by default DDP keeps rank 0's). The validation during the 2-process run gives exactly
    what eval_seg gives in one process on the saved model. (SyncBatchNorm, which would make a batch of 4
    per step, has no CPU implementation.)
    """
    args = [*SHORT, "--train.max_iters", "6", "--train.checkpoint_interval", "6", "--data.val_split", "val",
            "--train.bn_stats", "all"]
    multi = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "train.train_seg", *args, "--work-dir", str(multi)]
    r = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world 2 x batch 2 x accumulation 1 = total batch 4" in r.stderr
    single = tmp_path / "single"
    train_seg.main([*args, "--work-dir", str(single)])
    assert "world 1 x batch 2 x accumulation 2" in (single / "log.txt").read_text()
    a, b = _weights(multi), _weights(single)
    _assert_same_weights(a, b, atol=1e-5)  # parameters and BatchNorm running statistics

    # evaluation split over 2 ranks (areas all-reduced) == evaluation in one process
    out2, out1 = tmp_path / "m2.json", tmp_path / "m1.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "train.eval_seg", "--checkpoint", str(multi / "final"), "--config", TINY,
           "--workers", "0", "--out", str(out2)]
    r = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    eval_seg.main(["--checkpoint", str(multi / "final"), "--config", TINY, "--workers", "0",
                   "--out", str(out1)])
    m2, m1 = json.loads(out2.read_text()), json.loads(out1.read_text())
    assert m2["num_pixels"] == m1["num_pixels"] == 16 * 64 * 96 and m2["IoU"] == m1["IoU"]
    during = json.loads((multi / "metrics.json").read_text())  # validated by 2 ranks at the end of training
    assert during["num_pixels"] == m1["num_pixels"] and during["IoU"] == m1["IoU"]


def test_folder_dataset_training_and_errors_before_training(tmp_path):
    root = write_folder_dataset(tmp_path / "data", num_train=6, num_val=2,
                                class_names=("water", "grass", "cat"))
    args = [str(ROOT / "train" / "configs" / "custom_folder.yaml"), "--no-progress", "--data.root", str(root),
            "--model.preset", "denseclip-tiny-rn", "--data.crop_size", "64", "--data.scale", "[256, 64]",
            "--train.max_iters", "2", "--train.total_batch", "2", "--train.batch_size", "2",
            "--train.workers", "0", "--train.checkpoint_interval", "2", "--train.eval_interval", "1"]
    work = tmp_path / "ok"
    res = train_seg.main(["--config", *args, "--work-dir", str(work)])
    cfg = json.loads((work / "final" / "config.json").read_text())
    assert cfg["class_names"] == ["water", "grass", "cat"] and res["num_images"] == 2
    assert (work / "best" / "metrics.json").is_file()

    def fails(exc, match, *extra):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        with pytest.raises(exc, match=match):
            train_seg.main(["--config", *args, "--work-dir", str(bad), *extra])
        assert not (bad / "checkpoints").exists()  # nothing trained

    fails(FileNotFoundError, "dataset root folder not found", "--data.root", str(tmp_path / "missing"))
    fails(Exception, "unreachable", "--push-to-hub", "user/tiny")
    mask = next((root / "masks" / "val").glob("*.png"))
    np_mask = np.zeros((64, 96), np.uint8) + 9
    from PIL import Image

    Image.fromarray(np_mask).save(mask)
    fails(DatasetError, rf"{mask.name} has label values \[9\]")
    fails(ValueError, "batch_size from", "--train.batch_size", "3")
    # --skip-validate gets past the checks (the loss then refuses the bad labels only if they are drawn)
    train_seg.main(["--config", *args, "--work-dir", str(tmp_path / "skip"), "--skip-validate",
                    "--data.val_split", "none"])
