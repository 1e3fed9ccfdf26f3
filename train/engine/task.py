"""A training script is a `Task`; `train_task` is the scaffold every task shares.

    class SegTask(Task):
        metric = "mIoU"                              # the validation number that picks work_dir/best
        def __init__(self, cfg, env): ...            # read the config sections (on every rank)
        def load(self): ...                           # datasets; the model config takes the data's classes
        def build_model(self, pretrained): ...
        def step(self, run, batch): ...               # one micro-batch -> {"loss": total, other terms}
        def evaluate(self, run): ...                  # validation metrics (at least on rank 0)

    def main(argv=None):
        return train_task(SegTask, argv, __doc__)

train_task: the command line and the YAML -> the torchrun session -> the task's configs, datasets and
checks (with --push-to-hub, the Hub), where an error on any rank fails every rank before iteration 0 ->
the resume point -> the same random init on every rank -> the model (no CLIP download when resuming: the
checkpoint has every weight) -> start_training -> work_dir/config.yaml -> a summary line -> the resumable
data stream -> run_training -> finish_training.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from denseclip.config import Config

from .checkpoint import resolve_resume
from .cli import train_parser, work_dir_of
from .config import load_run_config, save_run_config
from .distributed import (
    DistEnv,
    accumulation_steps,
    broadcast_buffers,
    broadcast_from_main,
    distributed_session,
    on_every_rank,
)
from .hub import check_hub_ready
from .loop import TrainRun, finish_training, keep_best, run_training, start_training
from .sampling import build_train_loader, init_seed


class Task:
    """One task's part of a training run. After __init__ and load:

    cfg          {section: Config}, the run's config.yaml; cfg["model"] is the model to build and
                 cfg["train"] the TrainConfig (a task may derive some of it from its data in `load`)
    train_set    raw samples {"image", "label"}; transform(image, label, rng) -> a sample; collate_fn
                 samples -> a micro-batch (None: stacked tensors) -- what build_train_loader streams
    val_set      None: no validation
    """

    sections: tuple[str, ...] = ("model", "data", "train")
    metric = "mIoU"  # the validation number that picks work_dir/best
    val_keys: tuple[str, ...] = ("mIoU",)  # metrics logged at each validation (key prefixes), in percent
    validate_help = "skip the dataset checks"
    cudnn_benchmark = True  # False where input sizes vary (detection): it would only slow things down
    collate_fn: Callable | None = None
    iters_per_epoch: int | None = None  # set: the training log counts epochs too

    def __init__(self, cfg: dict, env: DistEnv):
        train = cfg["train"]
        accumulation_steps(train.total_batch, train.batch_size, env.world_size)  # fails now, if it will
        if train.sync_bn and env.distributed and env.device.type != "cuda":
            raise ValueError("train.sync_bn needs GPUs (SyncBatchNorm has no CPU implementation); "
                             "pass --train.sync_bn false")
        self.env = env
        self.cfg: dict[str, Config] = {"train": train}
        self.train_set = self.val_set = self.transform = None

    def load(self) -> None:
        """Build the datasets (every rank); resolve cfg["model"] against them (its classes)."""
        raise NotImplementedError

    def check_data(self) -> None:
        """Check every dataset file before training (rank 0; skipped with --skip-validate)."""

    def build_model(self, pretrained: bool) -> nn.Module:
        raise NotImplementedError

    def describe(self) -> str:
        """What the summary line says about the data, e.g. the dataset's name."""
        return ""

    def step(self, run: TrainRun, batch) -> dict[str, torch.Tensor]:
        """One micro-batch -> its losses {"loss": total, ...}, under autocast; the loop does the rest."""
        raise NotImplementedError

    def evaluate(self, run: TrainRun) -> dict:
        """Validation metrics of run.model (in eval mode) on val_set, with "num_images"; rank 0's count."""
        raise NotImplementedError


def train_task(task_cls: type[Task], argv: list[str] | None = None, doc: str | None = None) -> dict:
    """Run a training command line for `task_cls`; returns finish_training's results (on every rank), or
    {"stopped_at": iteration} after --stop-at."""
    args, overrides = train_parser(doc, task_cls.sections, task_cls.validate_help).parse_known_args(argv)
    cfg = load_run_config(args.config, overrides, task_cls.sections)
    with distributed_session(args.device) as env:
        task = on_every_rank(env, task_cls, cfg, env)
        on_every_rank(env, _load, task, args)
        return _train(task, args, work_dir_of(args))


def _load(task: Task, args: argparse.Namespace) -> None:
    task.load()
    if task.env.is_main:
        if not args.skip_validate:
            task.check_data()
        if args.push_to_hub:
            check_hub_ready(args.push_to_hub)


def _train(task: Task, args: argparse.Namespace, work_dir: Path) -> dict:
    env, cfg = task.env, task.cfg["train"]
    resume_from = resolve_resume(args.resume, work_dir)
    torch.manual_seed(init_seed(cfg.seed))  # the same random init (contexts, decoders) on every rank
    model = task.build_model(pretrained=resume_from is None)
    run = start_training(model, cfg, env, work_dir, resume_from, task.metric, progress=not args.no_progress,
                         cudnn_benchmark=task.cudnn_benchmark)
    if env.is_main:
        save_run_config({s: task.cfg[s] for s in task.sections}, work_dir / "config.yaml")
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad) / 1e6
    run.log.info(f"{run.model.cfg.name}: {trainable:.2f} M trainable params; {len(task.train_set)} training "
                 f"images ({task.describe()}); world {env.world_size} x batch {cfg.batch_size} x "
                 f"accumulation {run.accumulation} = total batch {cfg.total_batch}")
    loader = build_train_loader(task.train_set, task.transform, cfg, env, run.iteration, task.collate_fn)
    validate = None if task.val_set is None else partial(_validate, task, run)
    if run_training(run, iter(loader), partial(task.step, run), validate, args.stop_at, task.iters_per_epoch):
        return {"stopped_at": run.iteration}
    return finish_training(run, validate, args.push_to_hub)


def _validate(task: Task, run: TrainRun, it: int) -> dict:
    """The task's validation metrics at iteration `it` (rank 0's, on every rank), logged; the best model so
    far is kept in work_dir/best."""
    t0 = time.perf_counter()
    broadcast_buffers(run.model, run.env)  # rank 0's BN statistics (the checkpoint's) on every rank
    run.model.eval()
    metrics = broadcast_from_main(task.evaluate(run), run.env)
    run.model.train()
    shown = {k: 100 * metrics[k] for prefix in task.val_keys for k in metrics if k.startswith(prefix)}
    run.log.scalars(it, shown, prefix="val")
    run.log.info(f"iter {it}: " + "  ".join(f"{k} {v:.2f}" for k, v in shown.items())
                 + f"  ({metrics['num_images']} images, {time.perf_counter() - t0:.1f} s)")
    keep_best(run, metrics)
    return metrics
