"""Run configs: a YAML with one section per part (`model:`, `data:`, `train:`, ...), plus `--section.key
value` overrides from the command line.

    cfg = load_run_config("train/configs/denseclip_rn50_ade20k.yaml", ["--train.max_iters", "100"])
    cfg["train"]                    # a TrainConfig
    cfg["model"], cfg["data"]       # dicts, read by the task (DenseCLIPConfig.from_dict takes `preset:`)

Override values are parsed as YAML (`4`, `1e-4`, `true`, `null`, `[a, b]`), so the command line can say
anything the file can. Every section becomes a `denseclip.config.Config` (the library's one path:
unknown keys fail with the valid ones listed, lists become tuples, nested sections merge).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from denseclip.checkpoints import atomic_path
from denseclip.config import Config, read_yaml

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@dataclass
class TrainConfig(Config):
    """How to train: the authors' ADE20K recipe by default (80k iterations at a total batch of 32).

    Which parameters train at all (e.g. the text encoder) is the model's config (prompt.freeze_text_encoder).
    """

    max_iters: int = 80000
    total_batch: int = 32  # images per optimizer step, over all processes and accumulation micro-steps
    batch_size: int = 4  # images per process per micro-step; accumulation = total / (batch * world)
    lr: float = 1e-4  # AdamW
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_mult: float = 0.1  # the image encoder (and an unfrozen text encoder)
    schedule: str = "poly"  # "poly" (mmcv PolyLrUpdaterHook) | "step" (mmcv StepLrUpdaterHook) | "constant"
    poly_power: float = 0.9
    min_lr: float = 1e-6  # poly, mmcv semantics: every group decays towards min_lr
    lr_steps: tuple[int, ...] = ()  # step: iterations after which the lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    warmup_iters: int = 1500  # mmcv linear warm-up
    warmup_ratio: float = 1e-6
    amp: str = "none"  # "none" | "bf16" | "fp16" (fp16 uses a GradScaler)
    grad_clip: float | None = None  # max gradient L2 norm, None = off
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm (multi-GPU only)
    # BatchNorm running statistics under DDP: "rank0" (DDP's: rank 0's micro-batches only) or "all" (every
    # micro-batch of every rank, replayed in order: the same as one process with gradient accumulation)
    bn_stats: str = "rank0"
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    checkpoint_interval: int = 8000  # iterations; a checkpoint is also written at the end
    keep_checkpoints: int = 2  # iteration checkpoints kept (the best and the final model are kept apart)
    eval_interval: int = 8000  # iterations; 0 = evaluate only at the end
    eval_at_end: bool = True
    eval_max_images: int | None = None  # evaluate on the first N validation images (quick checks)
    seed: int = 0
    workers: int = 4  # dataloader workers per process
    log_interval: int = 50
    find_unused_parameters: bool = False  # DDP
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)

    def __post_init__(self):
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"train.amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        if self.bn_stats not in ("rank0", "all"):
            raise ValueError(f"train.bn_stats must be 'rank0' or 'all', got {self.bn_stats!r}")
        if self.bn_stats == "all" and self.sync_bn:
            raise ValueError("train.bn_stats: all and train.sync_bn both decide the BatchNorm statistics; "
                             "pick one")
        if self.schedule not in ("poly", "step", "constant"):
            raise ValueError(f"train.schedule must be 'poly', 'step' or 'constant', got {self.schedule!r}")
        for key in ("max_iters", "total_batch", "batch_size", "checkpoint_interval", "log_interval"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")


def parse_value(text: str) -> Any:
    """A command-line value as YAML (with `1e-4` read as a float, which YAML 1.1 would keep a string)."""
    if _FLOAT_RE.match(text.strip()) and not text.strip().lstrip("+-").isdigit():
        return float(text)
    return yaml.safe_load(text)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """["--train.max_iters", "100", "--model.prompt.num_contexts=4"] -> {"train.max_iters": 100, ...}."""
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise ValueError(f"expected an override like --section.key value, got {arg!r}")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ValueError(f"override {arg} has no value")
            value = args[i + 1]
            i += 2
        out[key.replace("-", "_")] = parse_value(value)
    return out


def set_dotted(d: dict, key: str, value: Any) -> None:
    """d["a"]["b"]["c"] = value for key "a.b.c" (creating missing dicts)."""
    parts = key.split(".")
    for p in parts[:-1]:
        if d.get(p) is None:
            d[p] = {}
        if not isinstance(d[p], dict):
            raise ValueError(f"cannot set {key}: {p!r} is not a section")
        d = d[p]
    d[parts[-1]] = value


def load_run_config(path: str | Path | None, overrides: list[str] | None = None,
                    sections: tuple[str, ...] = ("model", "data", "train")) -> dict:
    """The YAML at `path` (or nothing) with overrides applied: {section: dict}, `train` a TrainConfig."""
    raw = copy.deepcopy(read_yaml(path)) if path is not None else {}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise KeyError(f"unknown config section(s) {unknown} in {path}; valid sections: {list(sections)}")
    for key, value in parse_overrides(overrides or []).items():
        if key.split(".")[0] not in sections:
            raise KeyError(f"override --{key}: the first part must be a section {list(sections)}, "
                           "e.g. --train.lr 1e-4")
        set_dotted(raw, key, value)
    cfg = {s: dict(raw.get(s) or {}) for s in sections}
    cfg["train"] = TrainConfig.from_dict(cfg["train"], "train")
    return cfg


def save_run_config(sections: dict[str, Config], path: str | Path) -> None:
    """Write a run's resolved sections (every field, the model's too) as YAML, atomically."""
    text = yaml.safe_dump({k: v.to_dict() for k, v in sections.items()}, sort_keys=False, allow_unicode=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, "utf-8")
