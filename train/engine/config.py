"""Run configs: a YAML with `model:`, `data:`, `train:` sections, plus `--dotted.key value` overrides.

    cfg = load_run_config("train/configs/denseclip_rn50_ade20k.yaml", ["--train.max_iters", "100"])
    cfg["train"]   # a TrainConfig        cfg["model"]  # a dict (`preset:` + overrides, or full)

Override values are parsed as YAML (`4`, `1e-4`, `true`, `null`, `[a, b]`), so the command line can
say anything the file can. Unknown keys fail with the list of valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@dataclass
class TrainConfig:
    """How to train: the authors' ADE20K recipe by default (80k iterations at a total batch of 32)."""

    max_iters: int = 80000
    total_batch: int = 32  # images per optimizer step, over all processes and accumulation micro-steps
    batch_size: int = 4  # images per process per micro-step; accumulation = total / (batch * world)
    lr: float = 1e-4  # AdamW
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_mult: float = 0.1
    text_encoder_lr_mult: float = 0.0  # the text encoder is frozen by the model config (freeze_text_encoder)
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
    """["--train.max_iters", "100", "--model.num_contexts=4"] -> {"train.max_iters": 100, ...}."""
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


def _coerce(value: Any, tp: Any) -> Any:
    """YAML lists -> tuples where the dataclass field is a tuple."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return value if value is None or len(args) != 1 else _coerce(value, args[0])
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def dataclass_from_dict(cls: type, d: dict | None, section: str):
    """Build a dataclass from a dict; unknown keys fail with the valid ones listed."""
    d = dict(d or {})
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - valid)
    if unknown:
        raise KeyError(f"unknown {section} key(s) {unknown}; valid keys: {sorted(valid)}")
    return cls(**{k: _coerce(v, hints[k]) for k, v in d.items()})


def dataclass_to_dict(obj) -> dict:
    d = dataclasses.asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text("utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a mapping with model:, data:, train: sections")
    return data


def load_run_config(path: str | Path | None, overrides: list[str] | dict | None = None,
                    sections: tuple[str, ...] = ("model", "data", "train")) -> dict:
    """The YAML at `path` (or nothing) with overrides applied; `train` becomes a TrainConfig.

    Returns {"model": dict, "data": dict, "train": TrainConfig, ...} (other sections stay dicts).
    """
    raw = load_yaml(path) if path is not None else {}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise KeyError(f"unknown config section(s) {unknown} in {path}; valid sections: {list(sections)}")
    raw = copy.deepcopy(raw)
    ov = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    for key, value in ov.items():
        if key.split(".")[0] not in sections:
            raise KeyError(f"override --{key}: the first part must be a section {list(sections)}, e.g. --train.lr 1e-4")
        set_dotted(raw, key, value)
    cfg = {s: dict(raw.get(s) or {}) for s in sections}
    cfg["train"] = dataclass_from_dict(TrainConfig, cfg.get("train"), "train")
    return cfg


def model_config_from_dict(d: dict, config_cls: type | None = None, get_preset: Callable | None = None):
    """A model config from a YAML `model:` section: `preset: name` plus overrides, or every field.

    config_cls (with a `from_dict`) and get_preset (name -> config) name the task's config; the default
    is segmentation's (DenseCLIPConfig, denseclip.get_preset); detection passes DetectionConfig and
    get_detection_preset. A nested config (segmentation's `test:`) is merged key by key, not replaced.
    """
    if config_cls is None:
        from denseclip import DenseCLIPConfig as config_cls
        from denseclip import get_preset

    d = copy.deepcopy(d)
    if "preset" in d:
        preset = get_preset(d.pop("preset"))
        merged = dataclasses.asdict(preset)
        for key, value in d.items():
            nested = dataclasses.is_dataclass(getattr(preset, key, None))
            merged[key] = {**merged[key], **(value or {})} if nested else value
        d = merged
    return config_cls.from_dict(d)


def save_run_config(cfg: dict, path: str | Path) -> None:
    """Write a resolved run config (model as a full DenseCLIPConfig dict) as YAML."""
    out = {}
    for k, v in cfg.items():
        out[k] = v.to_dict() if hasattr(v, "to_dict") else dataclass_to_dict(v) if dataclasses.is_dataclass(v) else v
    Path(path).write_text(yaml.safe_dump(out, sort_keys=False, allow_unicode=True), "utf-8")
