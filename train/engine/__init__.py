"""Training machinery shared by train_seg.py and train_det.py: configs with overrides, command lines,
torchrun setup, optimizer and schedule, AMP, resumable data order, the training loop, atomic
checkpoints, logging, Hub upload."""

from .checkpoint import (
    find_latest,
    load_training_state,
    load_weights_into,
    resolve_resume,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from .cli import eval_parser, metrics_path, report_metrics, train_parser, work_dir_of
from .config import TrainConfig, load_run_config, parse_overrides, save_run_config
from .distributed import (
    DistEnv,
    accumulation_steps,
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    broadcast_error,
    cleanup_distributed,
    distributed_session,
    init_distributed,
)
from .hub import check_hub_ready, headline, model_card, push_folder
from .logger import RunLogger, peak_memory_mb, write_json
from .loop import TrainRun, finish_training, keep_best, run_training, start_training
from .optim import Amp, build_optimizer, lr_at, set_lr
from .sampling import InfiniteSampler, StreamDataset, build_train_loader, derive_seed, init_seed, step_seed

__all__ = [
    "find_latest", "load_training_state", "load_weights_into", "resolve_resume", "rng_state",
    "set_rng_state", "write_checkpoint", "eval_parser", "metrics_path", "report_metrics", "train_parser",
    "work_dir_of", "TrainConfig", "load_run_config", "parse_overrides", "save_run_config", "DistEnv", "accumulation_steps",
    "all_reduce_mean", "barrier", "broadcast_buffers", "broadcast_error", "cleanup_distributed",
    "distributed_session", "init_distributed", "check_hub_ready", "headline", "model_card", "push_folder",
    "RunLogger", "peak_memory_mb", "write_json", "TrainRun", "finish_training", "keep_best", "run_training",
    "start_training", "Amp", "build_optimizer", "lr_at", "set_lr", "InfiniteSampler", "StreamDataset",
    "build_train_loader", "derive_seed", "init_seed", "step_seed",
]
