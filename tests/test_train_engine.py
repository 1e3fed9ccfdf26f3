"""The shared training engine: config overrides, the mmcv schedule, accumulation, resumable sampling,
checkpoint files, optimizer groups, the Hub check and upload, collectives on two processes, the scripts
as modules. Unit tests (no training loop)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import denseclip
from denseclip.config import DenseCLIPConfig
from train.engine.checkpoint import (
    find_latest,
    load_training_state,
    resolve_resume,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from train.engine.config import TrainConfig, load_run_config, parse_overrides
from train.engine.distributed import DistEnv, accumulation_steps, broadcast_from_main, on_every_rank
from train.engine.hub import HubUnavailableError, check_hub_ready, recipe
from train.engine.loop import finish_training, headline, start_training
from train.engine.sampling import InfiniteSampler, StreamDataset, build_train_loader
from train.engine.schedule import build_optimizer, lr_at
from train.seg_data import DataConfig, resolve_class_names

ROOT = Path(__file__).resolve().parents[1]

SEG_CONFIGS = sorted(p for p in (ROOT / "train" / "configs").glob("*.yaml") if not p.stem.startswith("det_"))


def test_parse_overrides_types():
    ov = parse_overrides(["--train.max_iters", "100", "--train.lr", "1e-4", "--model.prompt.num_contexts=4",
                          "--train.amp", "bf16", "--train.grad_clip", "null", "--data.scale", "[512, 128]",
                          "--train.sync_bn", "false", "--model.test.mode", "whole"])
    assert ov == {"train.max_iters": 100, "train.lr": 1e-4, "model.prompt.num_contexts": 4,
                  "train.amp": "bf16", "train.grad_clip": None, "data.scale": [512, 128],
                  "train.sync_bn": False, "model.test.mode": "whole"}
    with pytest.raises(ValueError, match="no value"):
        parse_overrides(["--train.lr"])
    with pytest.raises(ValueError, match="--section.key"):
        parse_overrides(["train.lr", "1"])


def test_load_run_config_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  preset: denseclip-tiny-rn\ndata:\n  type: synthetic\ntrain:\n  max_iters: 10\n")
    cfg = load_run_config(p, ["--train.max_iters", "3", "--model.test.mode", "slide", "--train.betas",
                              "[0.8, 0.9]", "--model.prompt.num_contexts", "2"])
    train = cfg["train"]
    assert isinstance(train, TrainConfig) and train.max_iters == 3 and train.betas == (0.8, 0.9)
    m = DenseCLIPConfig.from_dict(cfg["model"])
    assert m.name == "denseclip-tiny-rn" and m.test.mode == "slide" and m.test.crop == 64  # merged
    assert m.prompt.num_contexts == 2 and m.prompt.decoder_width == 32  # the preset's prompt, one change
    with pytest.raises(KeyError, match=r"unknown train field\(s\) \['max_iter'\].*max_iters"):
        load_run_config(p, ["--train.max_iter", "3"])
    with pytest.raises(KeyError, match="first part must be a section"):
        load_run_config(p, ["--optim.lr", "3"])
    with pytest.raises(ValueError, match="train.amp"):
        load_run_config(p, ["--train.amp", "fp8"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_run_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", SEG_CONFIGS, ids=[p.stem for p in SEG_CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_run_config(path, ["--data.root", "/data"] if "synthetic" not in path.stem else [])
    model = DenseCLIPConfig.from_dict(cfg["model"])
    data = DataConfig.from_dict(cfg["data"], "data")
    if "ade20k" in path.stem:  # the authors' recipe
        t = cfg["train"]
        assert (t.max_iters, t.total_batch, t.lr, t.weight_decay, t.backbone_lr_mult, t.warmup_iters,
                t.warmup_ratio, t.min_lr, t.poly_power) == (80000, 32, 1e-4, 1e-4, 0.1, 1500, 1e-6, 1e-6, 0.9)
        assert data.crop_size == (640 if "vit" in path.stem else 512) and data.cat_max_ratio == 0.75
        assert model.test.mode == "slide" and model.test.crop == data.crop_size
        assert model.use_text == path.stem.startswith("denseclip")


def test_poly_schedule_with_linear_warmup_is_mmcv():
    cfg = TrainConfig(max_iters=1000, lr=1e-4, min_lr=1e-6, warmup_iters=100, warmup_ratio=1e-6,
                      poly_power=0.9)

    def mmcv(it, base):  # PolyLrUpdaterHook.get_lr + LrUpdaterHook.get_warmup_lr('linear'), iteration 0-based
        regular = (base - 1e-6) * (1 - it / 1000) ** 0.9 + 1e-6
        if it < 100:
            k = (1 - it / 100) * (1 - 1e-6)
            return regular * (1 - k)
        return regular

    for it in (0, 1, 50, 99, 100, 500, 999, 1000):
        for base in (1e-4, 1e-5):
            assert lr_at(it, base, cfg) == pytest.approx(mmcv(it, base), rel=1e-12)
    assert lr_at(0, 1e-4, cfg) == pytest.approx(1e-4 * 1e-6, rel=1e-3)
    assert lr_at(1000, 1e-4, cfg) == pytest.approx(1e-6)
    const = TrainConfig(schedule="constant", warmup_iters=0, lr=3e-4)
    assert lr_at(500, 3e-4, const) == 3e-4


def test_step_schedule_with_linear_warmup_is_mmcv():
    """mmdet 1x as detection sets it: epochs 8 and 11 of 100 iterations, warm-up 50 iterations."""
    cfg = TrainConfig(schedule="step", lr_steps=(800, 1100), lr_gamma=0.1, max_iters=1200, warmup_iters=50,
                      warmup_ratio=1e-3)

    def mmcv(it, base):  # StepLrUpdaterHook.get_lr + LrUpdaterHook.get_warmup_lr('linear'), iteration 0-based
        regular = base * 0.1 ** sum(it >= s for s in (800, 1100))
        return regular * (1 - (1 - it / 50) * (1 - 1e-3)) if it < 50 else regular

    for it in (0, 1, 25, 49, 50, 799, 800, 1099, 1100, 1199):
        for base in (1e-4, 1e-5):
            assert lr_at(it, base, cfg) == pytest.approx(mmcv(it, base), rel=1e-12)
    assert lr_at(799, 1e-4, cfg) == 1e-4 and lr_at(1100, 1e-4, cfg) == pytest.approx(1e-6, rel=1e-12)
    # what train_det computed before the engine had it: the constant schedule x gamma ** steps passed
    const = TrainConfig(schedule="constant", max_iters=1200, warmup_iters=50, warmup_ratio=1e-3)
    for it in range(1200):
        assert lr_at(it, 1e-4, cfg) == lr_at(it, 1e-4, const) * 0.1 ** sum(it >= s for s in (800, 1100))
    no_steps = TrainConfig(schedule="step", lr_steps=(), warmup_iters=0)
    assert lr_at(5, 1e-4, no_steps) == 1e-4  # no steps: constant
    with pytest.raises(ValueError, match="'poly', 'step' or 'constant'"):
        TrainConfig(schedule="cosine")


def test_accumulation_steps():
    assert accumulation_steps(32, 4, 8) == 1
    assert accumulation_steps(32, 4, 1) == 8
    assert accumulation_steps(32, 2, 4) == 4
    with pytest.raises(ValueError, match="pick train.batch_size from"):
        accumulation_steps(32, 3, 2)


def test_sampler_splits_each_iteration_the_same_way_for_any_world_size():
    single = InfiniteSampler(8, 2, world_size=1, rank=0, max_iters=3)  # 4 accumulation micro-steps
    ranks = [InfiniteSampler(8, 2, world_size=2, rank=r, max_iters=3) for r in range(2)]  # 2 micro-steps each
    s = list(single)
    assert s == list(range(24))
    per_rank = [list(r) for r in ranks]
    for it in range(3):  # each iteration covers the same 8 stream positions
        got = sorted(p for r in per_rank for p in r[it * 4:(it + 1) * 4])
        assert got == list(range(it * 8, it * 8 + 8))
    # micro-step m of rank r holds the slot m * world + r: micro-step (m * world + r) of one process
    assert list(ranks[1].positions(1, 1)) == list(single.positions(1, 3)) == [14, 15]
    resumed = InfiniteSampler(8, 2, world_size=1, rank=0, start_iter=2, max_iters=3)
    assert list(resumed) == s[16:] and len(resumed) == 8


class _Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return {"image": np.full((2, 2, 3), i, np.uint8), "label": np.zeros((2, 2), np.int64)}


def test_stream_dataset_epochs_and_augmentation_seeds():
    def transform(image, label, rng):
        return int(image[0, 0, 0]), float(rng.random())

    ds = StreamDataset(_Numbers(), transform, seed=7)
    first = [ds[g] for g in range(15)]
    for e in range(3):  # every epoch is a permutation
        assert sorted(x for x, _ in first[e * 5:(e + 1) * 5]) == list(range(5))
    assert [x for x, _ in first[:5]] != [x for x, _ in first[5:10]]  # reshuffled per epoch
    again = StreamDataset(_Numbers(), transform, seed=7)
    assert [again[g] for g in (14, 3, 9)] == [first[14], first[3], first[9]]  # a pure function of (seed, g)
    assert StreamDataset(_Numbers(), transform, seed=8)[0] != first[0]


def test_train_loader_micro_batches_and_collate_fn():
    def transform(image, label, rng):
        return torch.from_numpy(image[0, 0]).long(), int(label.sum())

    cfg = TrainConfig(total_batch=4, batch_size=2, max_iters=3, seed=7, workers=0)
    stacked = list(build_train_loader(_Numbers(), transform, cfg, DistEnv(), start_iter=1))
    assert len(stacked) == 4 and stacked[0][0].shape == (2, 3)  # 2 iterations x 2 micro-batches, stacked
    stream = StreamDataset(_Numbers(), transform, seed=7)
    assert [int(x[0]) for b in stacked for x in b[0]] == [int(stream[g][0][0]) for g in range(4, 12)]
    listed = list(build_train_loader(_Numbers(), transform, cfg, DistEnv(), start_iter=1, collate_fn=list))
    assert isinstance(listed[0], list) and len(listed[0]) == 2  # e.g. detection: images of different sizes
    assert [int(s[0][0]) for b in listed for s in b] == [int(x[0]) for b in stacked for x in b[0]]


def test_rng_state_round_trip_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "s.pt")
    expect = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expect


def test_checkpoints_atomic_latest_and_pruning(tmp_path):
    model = denseclip.build_model("fpn-clip-tiny-rn", pretrained=False)
    opt = build_optimizer(model, TrainConfig())
    for it in (2, 4, 6):
        state = {"iteration": it, "optimizer": opt.state_dict(), "rng": rng_state()}
        write_checkpoint(model, tmp_path, it, state, keep=2)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["iter_0000004", "iter_0000006", "latest.txt"]
    (ckpts / "iter_0000008.tmp").mkdir()  # a save interrupted by a kill
    (ckpts / "iter_0000010").mkdir()  # a folder without its files
    assert find_latest(ckpts).name == "iter_0000006"
    (ckpts / "latest.txt").unlink()
    assert resolve_resume("auto", tmp_path).name == "iter_0000006"
    assert resolve_resume("latest", tmp_path).name == "iter_0000006"
    assert resolve_resume(str(tmp_path), tmp_path / "x").name == "iter_0000006"
    assert resolve_resume(None, tmp_path) is None
    typo = tmp_path / "typo"  # --resume in a work dir without checkpoints: refused, naming where it looked
    with pytest.raises(FileNotFoundError, match=r"typo/checkpoints.*--resume auto"):
        resolve_resume("latest", typo)
    assert resolve_resume("auto", typo) is None  # explicitly allowed to start fresh
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_resume(str(tmp_path / "empty"), tmp_path)
    state = load_training_state(ckpts / "iter_0000006")  # weights_only=True
    assert state["iteration"] == 6 and "state" in state["optimizer"]
    loaded = denseclip.load_checkpoint(ckpts / "iter_0000006")  # the weights stand alone
    assert loaded.cfg == model.cfg


def test_optimizer_groups_follow_the_recipe():
    model = denseclip.build_model("denseclip-tiny-rn", pretrained=False)
    opt = build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=1e-4, backbone_lr_mult=0.1))
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    text = [n for n in named if n.startswith("prompting.text_encoder.")]
    assert text and all(id(named[n]) not in by_param for n in text)  # frozen
    assert by_param[id(named["prompting.contexts"])]["lr"] == 1e-4
    assert by_param[id(named["prompting.gamma"])]["lr"] == 1e-4
    bb = [n for n in named if n.startswith("encoder.")]
    assert bb and all(by_param[id(named[n])]["initial_lr"] == pytest.approx(1e-5) for n in bb)
    norms = [n for n in named if "norm" in n and not n.startswith(("encoder.", "prompting.text_encoder."))]
    assert norms and all(by_param[id(named[n])]["weight_decay"] == 0.0 for n in norms)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in named.values())
    # one switch, the model's freeze_text_encoder; unfrozen, the text encoder trains at the backbone's lr
    thawed = denseclip.build_model("denseclip-tiny-rn", pretrained=False,
                                   prompt={"freeze_text_encoder": False})
    opt = build_optimizer(thawed, TrainConfig(lr=1e-4, weight_decay=1e-4, backbone_lr_mult=0.1))
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    text = [p for n, p in thawed.named_parameters() if n.startswith("prompting.text_encoder.")]
    assert text and all(by_param[id(p)]["initial_lr"] == pytest.approx(1e-5) for p in text)


def test_class_names_come_from_the_dataset():
    base = denseclip.get_preset("denseclip-tiny-rn")

    class DS:
        class_names, num_classes, name = ("a", "b"), 2, "ds"

    assert resolve_class_names(base, DS, explicit=False).class_names == ("a", "b")
    with pytest.raises(ValueError, match="2 classes"):
        resolve_class_names(base, DS, explicit=True)


def test_push_to_hub_fails_fast_offline(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda *a, **k: pytest.fail("no request offline"))
    t0 = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="unreachable.*HF_HUB_OFFLINE"):
        check_hub_ready("user/my-model")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ValueError, match="repo id"):
        check_hub_ready("not-a-repo")


def test_push_to_hub_needs_a_token(monkeypatch):
    import huggingface_hub

    def whoami(self, *args, **kwargs):
        raise OSError("401 Unauthorized")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", whoami)
    with pytest.raises(HubUnavailableError, match="401 Unauthorized.*huggingface-cli login"):
        check_hub_ready("user/my-model")
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, *a, **k: {"name": "user"})
    check_hub_ready("user/my-model")


def test_final_upload_is_the_models_own_with_its_card(tmp_path, monkeypatch):
    """--push-to-hub at the end of a run: model.push_to_hub (weights, config.json, a card with the validation
    numbers and the recipe); nothing but the upload itself is stubbed."""
    import huggingface_hub

    uploaded = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded.update(repo_id=repo_id, files={f.name: f.read_bytes() for f in Path(folder_path).iterdir()})
        return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **k: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    cfg = TrainConfig(max_iters=2, total_batch=2, batch_size=2, schedule="step", lr_steps=(1,), workers=0)
    model = denseclip.build_model("denseclip-tiny-rn", pretrained=False)
    run = start_training(model, cfg, DistEnv(), tmp_path, None, "mIoU", progress=False)
    run.results = {"aAcc": 0.9, "mIoU": 0.5, "mAcc": 0.6}
    finish_training(run, push_to_hub="user/tiny")
    assert uploaded["repo_id"] == "user/tiny" and {"model.safetensors", "config.json", "README.md"} <= set(
        uploaded["files"])
    assert json.loads(uploaded["files"]["config.json"]) == run.model.cfg.to_dict()
    card = uploaded["files"]["README.md"].decode()
    assert "semantic-segmentation" in card and 'load_checkpoint("user/tiny")' in card
    assert "| 90.00 | 50.00 | 60.00 |" in card and "max_iters=2" in card and "lr_steps=[1]" in card
    assert "pushed to https://huggingface.co/user/tiny/commit/1" in (tmp_path / "log.txt").read_text()
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "model.safetensors").write_bytes(uploaded["files"]["model.safetensors"])
    assert denseclip.load_checkpoint(tmp_path / "hub").cfg == run.model.cfg


def test_recipe_and_headline():
    assert recipe(TrainConfig(max_iters=10, lr=1e-3)) == {"max_iters": 10, "total_batch": 32, "lr": 1e-3,
                                                          "weight_decay": 1e-4, "backbone_lr_mult": 0.1,
                                                          "warmup_iters": 1500, "amp": "none"}
    step = recipe(TrainConfig(schedule="step", lr_steps=(8,), lr_gamma=0.5))
    assert step["lr_steps"] == [8] and step["lr_gamma"] == 0.5
    assert headline({"mIoU": 0.4567}, "mIoU") == "mIoU 45.67"
    assert headline({"bbox_AP": 0.4567}, "bbox_AP") == "box AP 45.7"


def _two_ranks(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    env = DistEnv(rank=rank, world_size=2, backend="gloo")
    got = {"main": broadcast_from_main({"from": rank}, env), "ok": on_every_rank(env, lambda x: x + rank, 10)}

    def fails_on_rank_1():
        if rank == 1:
            raise FileNotFoundError("no data folder on this node")

    try:
        on_every_rank(env, fails_on_rank_1)
    except Exception as e:  # noqa: BLE001 (recorded for the test)
        got["error"] = f"{type(e).__name__}: {e}"
    dist.destroy_process_group()
    Path(out, f"{rank}.json").write_text(json.dumps(got))


def test_collectives_on_two_processes(tmp_path):
    """An error on one rank fails every rank (none is left waiting); rank 0's value reaches every rank."""
    torch.multiprocessing.spawn(_two_ranks, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r0["main"] == r1["main"] == {"from": 0} and (r0["ok"], r1["ok"]) == (10, 11)
    assert r0["error"] == ("RuntimeError: rank 1 failed before training: "
                           "FileNotFoundError: no data folder on this node")
    assert r1["error"] == "FileNotFoundError: no data folder on this node"


@pytest.mark.parametrize("script", ["train_seg", "eval_seg", "train_det", "eval_det"])
def test_scripts_run_as_modules_only(script):
    r = subprocess.run([sys.executable, str(ROOT / "train" / f"{script}.py"), "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == f"run it as a module from the repository root: python -m train.{script} --help"


def test_script_runs_as_a_module():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "train.train_det", "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "python -m train.train_det" in r.stdout and "--push-to-hub REPO" in r.stdout


def test_batchnorm_replay_equals_sequential_micro_batches(tmp_path):
    """Replaying recorded micro-batch statistics gives the running statistics of running them in order."""
    import torch.distributed as dist

    from train.engine.bn_stats import BatchNormReplay

    torch.manual_seed(0)
    ref, model = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    batches = [torch.randn(2, 3, 5, 4) * 3 + 1 for _ in range(3)]
    for x in batches:
        ref(x)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        replay = BatchNormReplay(model, world_size=1)
        replay.begin()
        for x in batches:
            model(x)
        model.running_mean.zero_()  # whatever the forwards did, the replay decides
        replay.finish()
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(model.running_mean, ref.running_mean)
    torch.testing.assert_close(model.running_var, ref.running_var)
    assert int(model.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    with pytest.raises(ValueError, match="pick one"):
        TrainConfig(bn_stats="all", sync_bn=True)
