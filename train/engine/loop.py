"""The training loop every task shares; the task only says how a micro-batch becomes its losses.

    torch.manual_seed(init_seed(cfg.seed))                    # the same random init on every rank
    run = start_training(build(...), cfg, env, work_dir, resume_from, metric="mIoU")
    def step(batch):                                          # under autocast; the loop does backward
        images, labels = (t.to(env.device) for t in batch)
        return run.train_model(images, labels)                # {"loss": total, other terms for the log}
    if run_training(run, iter(loader), step, evaluate, stop_at):
        return {"stopped_at": run.iteration}                  # --stop-at: a debug stop, like a kill
    return finish_training(run, evaluate, push_to_hub)

One iteration = one optimizer step over cfg.total_batch images: `accumulation` micro-batches per
process, the DDP all-reduce on the last one only (`no_sync` before), the loss scaled by 1/accumulation,
AMP (and the fp16 GradScaler), gradient clipping, the lr of `lr_at` set before the step. Every
micro-batch reseeds the model's RNG (dropout, drop path, RoI sampling) from (seed, iteration, slot), so
a run resumed from a checkpoint, or run on another number of GPUs, computes the same thing.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from denseclip.checkpoints import save_checkpoint, write_json

from .amp import Amp
from .bn_stats import BatchNormReplay
from .checkpoint import load_training_state, load_weights_into, rng_state, set_rng_state, write_checkpoint
from .config import TrainConfig
from .distributed import DistEnv, accumulation_steps, all_reduce_mean, barrier
from .hub import recipe
from .logger import RunLogger, peak_memory_mb
from .sampling import step_seed
from .schedule import build_optimizer, set_lr

Losses = dict[str, torch.Tensor]


@dataclass
class TrainRun:
    """One run: what start_training sets up and the loop advances (iteration, best, results)."""

    cfg: TrainConfig
    env: DistEnv
    work_dir: Path
    model: torch.nn.Module  # the plain model: checkpoints, evaluation
    train_model: torch.nn.Module  # what the step calls: the model, in DDP (and torch.compile) when asked
    ddp: torch.nn.parallel.DistributedDataParallel | None
    optimizer: torch.optim.Optimizer
    amp: Amp
    log: RunLogger
    accumulation: int  # micro-steps per iteration on each process
    metric: str  # the validation number that picks work_dir/best ("mIoU", "bbox_AP")
    iteration: int = 0  # iterations done
    best: dict = field(default_factory=dict)  # {metric: value, "iteration": it}; keep_best updates it
    results: dict = field(default_factory=dict)  # the latest evaluation
    resumed_from: Path | None = None
    bn_replay: BatchNormReplay | None = None  # train.bn_stats: all, under DDP


def start_training(model: torch.nn.Module, cfg: TrainConfig, env: DistEnv, work_dir: Path,
                   resume_from: Path | None, metric: str, progress: bool = True,
                   cudnn_benchmark: bool = True) -> TrainRun:
    """From a freshly built model to iteration 0 (or the checkpoint's iteration): determinism flags,
    the checkpoint's weights, device, memory format, SyncBN, AdamW groups, AMP, the checkpoint's
    optimizer/scaler/RNG state, DDP, torch.compile, the logger. metric: the validation number keep_best
    tracks (a checkpoint's own best is restored when resuming).
    cudnn_benchmark: False where input sizes vary (detection), where it would only slow things down."""
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif cudnn_benchmark and env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if resume_from is not None:
        load_weights_into(model, resume_from)
    model.to(env.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and env.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.train()
    optimizer = build_optimizer(model, cfg)
    amp = Amp(cfg.amp, env.device)
    start_iter, best = 0, {metric: -1.0, "iteration": -1}
    if resume_from is not None:
        start_iter, best = _restore_state(resume_from, optimizer, amp, cfg, env)
    ddp = None
    if env.distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters)
    train_model = model if ddp is None else ddp
    if cfg.compile:
        train_model = torch.compile(train_model)
    log = RunLogger(work_dir, env, cfg.max_iters, start_iter, progress=progress)
    accumulation = accumulation_steps(cfg.total_batch, cfg.batch_size, env.world_size)
    replay = BatchNormReplay(model, env.world_size) if cfg.bn_stats == "all" and env.distributed else None
    return TrainRun(cfg=cfg, env=env, work_dir=Path(work_dir), model=model, train_model=train_model, ddp=ddp,
                    optimizer=optimizer, amp=amp, log=log, accumulation=accumulation, metric=metric,
                    iteration=start_iter, best=best, resumed_from=resume_from, bn_replay=replay)


def _restore_state(folder: Path, optimizer, amp: Amp, cfg: TrainConfig, env: DistEnv) -> tuple[int, dict]:
    """Load what _checkpoint saved; returns (iteration, best)."""
    state = load_training_state(folder)
    optimizer.load_state_dict(state["optimizer"])
    amp.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    saved = state.get("train", {})
    changed = [k for k in ("seed", "total_batch", "max_iters", "lr")
               if k in saved and saved[k] != getattr(cfg, k)]
    if changed and env.is_main:
        print(f"warning: resuming with a different train.{', train.'.join(changed)} than the checkpoint's; "
              "the result will differ from an uninterrupted run", file=sys.stderr)
    return int(state["iteration"]), dict(state["best"])


def _checkpoint(run: TrainRun) -> None:
    """Rank 0 writes work_dir/checkpoints/iter_N (weights + state.pt); every rank waits for it."""
    cfg, env, it = run.cfg, run.env, run.iteration
    if env.is_main:
        state = {"iteration": it, "optimizer": run.optimizer.state_dict(), "scaler": run.amp.state_dict(),
                 "rng": rng_state(), "best": run.best,
                 "sampler": {"next_iteration": it, "seed": cfg.seed, "total_batch": cfg.total_batch},
                 "world_size": env.world_size, "accumulation": run.accumulation, "train": cfg.to_dict()}
        folder = write_checkpoint(run.model, run.work_dir, it, state, cfg.keep_checkpoints)
        run.log.info(f"checkpoint {folder}")
    barrier(env)


def _iteration(run: TrainRun, batches: Iterator, step: Callable[[Any], Losses], window: dict) -> float | None:
    """One optimizer step over run.accumulation micro-batches (their losses / accumulation added to
    `window`); returns the gradient norm when clipping."""
    cfg, env, ddp, accum, it = run.cfg, run.env, run.ddp, run.accumulation, run.iteration
    if run.bn_replay is not None:
        run.bn_replay.begin()
    for m in range(accum):
        batch = next(batches)
        torch.manual_seed(step_seed(cfg.seed, it, m * env.world_size + env.rank))  # dropout, drop path, RoIs
        sync = ddp is None or m == accum - 1  # gradients are all-reduced on the last micro-step only
        with contextlib.nullcontext() if sync else ddp.no_sync():
            with run.amp.autocast():
                losses = step(batch)
            run.amp.backward(losses["loss"] / accum)
        for k, v in losses.items():
            window[k] += v.detach().float() / accum
    if run.bn_replay is not None:
        run.bn_replay.finish()
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    grad_norm = run.amp.step(run.optimizer, params, cfg.grad_clip)
    run.optimizer.zero_grad(set_to_none=True)
    run.iteration = it + 1
    return grad_norm


def run_training(run: TrainRun, batches: Iterator, step: Callable[[Any], Losses],
                 evaluate: Callable[[int], dict] | None = None, stop_at: int | None = None,
                 iters_per_epoch: int | None = None) -> bool:
    """Iterate from run.iteration to cfg.max_iters. Returns True when stopped early by `stop_at`.

    batches: this rank's micro-batches (build_train_loader); step(batch) -> {"loss": total, ...}, called
    under autocast (every term is logged, averaged over the log window and the processes);
    evaluate(it) -> metrics, every cfg.eval_interval iterations (not at the last: finish_training does it).
    """
    cfg, env, log = run.cfg, run.env, run.log
    if run.resumed_from is not None:
        log.info(f"resumed from {run.resumed_from} at iteration {run.iteration}")
    elif (run.work_dir / "checkpoints").is_dir() and any((run.work_dir / "checkpoints").glob("iter_*")):
        log.info(f"warning: {run.work_dir}/checkpoints holds checkpoints of an earlier run; "
                 "pass --resume to continue it")
    window, n_window, t_window = defaultdict(float), 0, time.perf_counter()
    while run.iteration < cfg.max_iters:
        lr = set_lr(run.optimizer, run.iteration, cfg)
        grad_norm = _iteration(run, batches, step, window)
        it = run.iteration
        n_window += 1
        log.advance()

        if it % cfg.log_interval == 0 or it == cfg.max_iters:
            values = all_reduce_mean({k: float(v) / n_window for k, v in window.items()}, env)
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"loss is {values['loss']} at iteration {it}; lower train.lr, set "
                                         "(or lower) train.grad_clip, or train without fp16 AMP")
            dt = time.perf_counter() - t_window
            values.update(lr=lr, images_per_s=cfg.total_batch * n_window / max(dt, 1e-9),
                          memory_mb=peak_memory_mb(env.device))
            if iters_per_epoch:
                values["epoch"] = it / iters_per_epoch
            if grad_norm is not None:
                values["grad_norm"] = grad_norm
            log.scalars(it, values)
            log.info(f"iter {it}/{cfg.max_iters}  " + "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
            window, n_window, t_window = defaultdict(float), 0, time.perf_counter()

        if evaluate is not None and cfg.eval_interval and it % cfg.eval_interval == 0 and it < cfg.max_iters:
            run.results = evaluate(it)
        if it % cfg.checkpoint_interval == 0 or it == cfg.max_iters:
            _checkpoint(run)
        if stop_at is not None and it >= stop_at:  # debug: behave like a run killed here
            log.info(f"--stop-at {stop_at}: stopping without finishing")
            log.close()
            return True
    return False


def keep_best(run: TrainRun, metrics: dict) -> None:
    """Remember the best run.metric so far (NaN counts as -1); rank 0 saves that model to work_dir/best
    (+ metrics.json)."""
    value = float(metrics[run.metric]) if math.isfinite(metrics[run.metric]) else -1.0
    if value > run.best[run.metric]:
        run.best.update({run.metric: value, "iteration": run.iteration})
        if run.env.is_main:
            best = run.work_dir / "best"
            save_checkpoint(run.model, best, {"iteration": run.iteration, run.metric: value})
            write_json(best / "metrics.json", {"iteration": run.iteration, **metrics})


def headline(metrics: dict, key: str) -> str:
    """The validation number `key` as runs report it: mIoU with 2 decimals, box AP with 1 (as papers)."""
    if key == "mIoU":
        return f"mIoU {100 * metrics[key]:.2f}"
    if key == "bbox_AP":
        return f"box AP {100 * metrics[key]:.1f}"
    return f"{key} {metrics[key]:.4g}"


def finish_training(run: TrainRun, evaluate: Callable[[int], dict] | None = None,
                    push_to_hub: str | None = None) -> dict:
    """The final evaluation (cfg.eval_at_end), work_dir/final (weights, metrics.json when evaluated),
    work_dir/metrics.json, the Hub upload (the model's own card: what it is, its validation numbers, the
    recipe). Returns {"iteration", "best", **metrics}."""
    cfg, env, log, it = run.cfg, run.env, run.log, run.iteration
    if evaluate is not None and cfg.eval_at_end:
        run.results = evaluate(it)
    results = run.results
    if env.is_main:
        final = run.work_dir / "final"
        save_checkpoint(run.model, final, {"iteration": it})
        summary = {"iteration": it, "best": run.best, **results}
        write_json(run.work_dir / "metrics.json", summary)
        if results:
            write_json(final / "metrics.json", summary)
        shown = f"; {headline(results, run.metric)}" if run.metric in results else ""
        log.info(f"final model: {final}{shown}")
        if push_to_hub:
            card = {"metrics": results, "repo_id": push_to_hub, "training": recipe(cfg)}
            url = run.model.push_to_hub(push_to_hub, model_card_kwargs=card)
            log.info(f"pushed to {url}")
    barrier(env)
    log.close()
    return {"iteration": it, "best": run.best, **results}
