"""The training machinery the task scripts share: YAML configs with `--section.key` overrides, command
lines, torchrun setup, AdamW groups and the mmcv schedules, AMP, the resumable data stream, the loop,
atomic checkpoints, logging, the Hub upload. A script defines a `Task` and calls `train_task`; an
evaluation script calls `evaluate_main`. The modules' other names are for the engine and its tests."""

from .cli import eval_parser, evaluate_main
from .distributed import DistEnv, barrier
from .loop import TrainRun
from .task import Task, train_task

__all__ = ["DistEnv", "Task", "TrainRun", "barrier", "eval_parser", "evaluate_main", "train_task"]
