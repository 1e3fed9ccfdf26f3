"""engine/loop.py on a toy regression model (fast, no DenseCLIP): gradient accumulation, the lr
schedule seen by each step, per-micro-step RNG, logging, evaluation and best-model hooks, periodic
checkpoints, --stop-at and resume, the final folder. train_seg/train_det run it end to end elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.engine.checkpoint import resolve_resume
from train.engine.config import TrainConfig
from train.engine.distributed import DistEnv
from train.engine.loop import finish_training, keep_best, run_training, start_training
from train.engine.sampling import init_seed
from train.engine.schedule import lr_at

TOTAL = 4  # images per iteration


class _Cfg:
    name = "toy"

    def to_dict(self) -> dict:
        return {"name": self.name}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


class Toy(torch.nn.Module):
    """y = w.x + b with optional dropout on x; the loss dict the loop expects."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.cfg = _Cfg()
        self.lin = torch.nn.Linear(3, 1)
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x, y):
        mse = ((self.lin(self.drop(x)).squeeze(1) - y) ** 2).mean()
        return {"mse": mse, "loss": 2 * mse}


def _data(start_iter: int, batch_size: int):
    """Micro-batches of iteration `it` take samples [it * TOTAL, (it + 1) * TOTAL), as the engine's do."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    it = start_iter
    while True:
        for m in range(TOTAL // batch_size):
            idx = torch.arange(it * TOTAL + m * batch_size, it * TOTAL + (m + 1) * batch_size) % len(x)
            yield x[idx], y[idx]
        it += 1


def _cfg(**kw) -> TrainConfig:
    base = dict(max_iters=10, total_batch=TOTAL, batch_size=TOTAL, lr=0.05, weight_decay=0.0,
                schedule="constant", warmup_iters=0, checkpoint_interval=100, log_interval=5, eval_interval=0,
                workers=0)
    return TrainConfig(**{**base, **kw})


def _run(work: Path, cfg: TrainConfig, dropout: float = 0.0, resume: str | None = None, stop_at=None,
         evaluate=None, step_log: list | None = None, iters_per_epoch=None):
    torch.manual_seed(init_seed(cfg.seed))
    resume_from = resolve_resume(resume, work)
    run = start_training(Toy(dropout), cfg, DistEnv(), work, resume_from, metric="score", progress=False)

    def step(batch):
        x, y = batch
        if step_log is not None:
            step_log.append((run.iteration, run.optimizer.param_groups[0]["lr"], torch.rand(1).item()))
        return run.train_model(x, y)

    hook = None if evaluate is None else (lambda it: evaluate(run, it))
    stopped = run_training(run, _data(run.iteration, cfg.batch_size), step, hook, stop_at, iters_per_epoch)
    return run, stopped, (None if stopped else finish_training(run, hook))


def _params(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def test_accumulation_equals_one_large_batch(tmp_path):
    one, _, _ = _run(tmp_path / "one", _cfg(batch_size=4))
    acc, _, _ = _run(tmp_path / "acc", _cfg(batch_size=1))  # 4 micro-steps of 1
    assert acc.accumulation == 4
    for k, v in _params(one).items():
        torch.testing.assert_close(_params(acc)[k], v, rtol=0, atol=1e-6)


def test_each_step_sees_the_scheduled_lr_and_its_own_seed(tmp_path):
    cfg = _cfg(batch_size=2, schedule="step", lr_steps=(3, 6), lr_gamma=0.5, warmup_iters=2, warmup_ratio=0.1)
    seen: list = []
    _run(tmp_path / "a", cfg, step_log=seen)
    assert [it for it, _, _ in seen] == [i for i in range(10) for _ in range(2)]  # 2 micro-steps each
    for it, lr, _ in seen:
        assert lr == lr_at(it, 0.05, cfg)
    expected = [0.005, 0.0275, 0.05, 0.025, 0.025, 0.025, 0.0125]
    assert [lr for _, lr, _ in seen[::2]][:7] == pytest.approx(expected)
    draws = [r for _, _, r in seen]
    assert len(set(draws)) == len(draws)  # every micro-step reseeded differently...
    again: list = []
    _run(tmp_path / "b", cfg, step_log=again)
    assert [r for _, _, r in again] == draws  # ...and the same way in every run


def test_logs_checkpoints_and_final_folder(tmp_path):
    work = tmp_path / "run"
    res = _run(work, _cfg(checkpoint_interval=4, keep_checkpoints=5, grad_clip=1.0), iters_per_epoch=5)[2]
    assert res == {"iteration": 10, "best": {"score": -1.0, "iteration": -1}}
    logged = [json.loads(line) for line in (work / "scalars.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in logged] == [5, 10] and [r["epoch"] for r in logged] == [1.0, 2.0]
    assert list(logged[0])[:4] == ["iter", "prefix", "mse", "loss"] and logged[0]["loss"] == pytest.approx(
        2 * logged[0]["mse"]) and "grad_norm" in logged[0] and logged[0]["lr"] == 0.05
    assert sorted(p.name for p in (work / "checkpoints").glob("iter_*")) == ["iter_0000004", "iter_0000008",
                                                                             "iter_0000010"]
    state = torch.load(work / "checkpoints" / "iter_0000008" / "state.pt", weights_only=True)
    assert state["iteration"] == 8 and state["sampler"]["next_iteration"] == 8 and state["accumulation"] == 1
    assert json.loads((work / "metrics.json").read_text())["iteration"] == 10
    assert (work / "final" / "model.safetensors").is_file() and not (work / "final" / "metrics.json").exists()


def test_stop_and_resume_equals_uninterrupted(tmp_path):
    cfg = _cfg(batch_size=2, checkpoint_interval=3, schedule="step", lr_steps=(5,))
    full, _, _ = _run(tmp_path / "full", cfg, dropout=0.5)
    run, stopped, _ = _run(tmp_path / "cut", cfg, dropout=0.5, stop_at=4)
    assert stopped and run.iteration == 4 and not (tmp_path / "cut" / "final").exists()
    resumed, stopped, _ = _run(tmp_path / "cut", cfg, dropout=0.5, resume="auto")  # from iteration 3
    assert not stopped and resumed.iteration == 10
    assert "resumed from" in (tmp_path / "cut" / "log.txt").read_text()
    a, b = _params(full), load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_evaluation_hook_and_best_model(tmp_path):
    calls = []

    def evaluate(run, it):
        calls.append(it)
        metrics = {"score": {4: 0.5, 8: 0.3, 10: 0.7}[it]}
        keep_best(run, metrics)
        return metrics

    work = tmp_path / "run"
    res = _run(work, _cfg(eval_interval=4), evaluate=evaluate)[2]
    assert calls == [4, 8, 10]  # every 4 iterations, and once at the end (not twice at 8 + end)
    assert res["best"] == {"score": 0.7, "iteration": 10} and res["score"] == 0.7
    assert json.loads((work / "best" / "metrics.json").read_text()) == {"iteration": 10, "score": 0.7}
    assert json.loads((work / "final" / "metrics.json").read_text())["score"] == 0.7


def test_non_finite_loss_stops_with_advice(tmp_path):
    with pytest.raises(FloatingPointError, match="lower train.lr"):
        _run(tmp_path / "nan", _cfg(lr=1e30, log_interval=1, max_iters=3))
