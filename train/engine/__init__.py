"""Training machinery shared by train_seg.py and train_det.py: configs with overrides, torchrun
setup, optimizer and schedule, AMP, resumable data order, atomic checkpoints, logging, Hub upload."""

from .checkpoint import (
    find_latest,
    load_training_state,
    load_weights_into,
    resolve_resume,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from .config import (
    TrainConfig,
    dataclass_from_dict,
    load_run_config,
    model_config_from_dict,
    parse_overrides,
    save_run_config,
)
from .distributed import (
    DistEnv,
    accumulation_steps,
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    broadcast_error,
    cleanup_distributed,
    init_distributed,
)
from .hub import check_hub_ready, model_card, push_folder
from .logger import RunLogger, peak_memory_mb, write_json
from .optim import Amp, build_optimizer, lr_at, set_lr
from .sampling import InfiniteSampler, StreamDataset, build_train_loader, derive_seed, init_seed, step_seed

__all__ = [
    "find_latest", "load_training_state", "load_weights_into", "resolve_resume", "rng_state",
    "set_rng_state", "write_checkpoint", "TrainConfig", "dataclass_from_dict", "load_run_config",
    "model_config_from_dict", "parse_overrides", "save_run_config", "DistEnv", "accumulation_steps",
    "all_reduce_mean", "barrier", "broadcast_buffers", "broadcast_error", "cleanup_distributed",
    "init_distributed", "check_hub_ready", "model_card", "push_folder", "RunLogger", "peak_memory_mb",
    "write_json", "Amp", "build_optimizer", "lr_at", "set_lr", "InfiniteSampler", "StreamDataset",
    "build_train_loader", "derive_seed", "init_seed", "step_seed",
]
