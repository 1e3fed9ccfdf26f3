"""Optimizer, learning-rate schedule and mixed precision, as the DenseCLIP authors' mmcv recipe.

The schedule is a pure function of the iteration (nothing to save or restore): every group's lr is
`lr_at(it, group["initial_lr"])`, set before each optimizer step.

    poly (mmcv PolyLrUpdaterHook):  lr = (base - min_lr) * (1 - it / max_iters) ** power + min_lr
    step (mmcv StepLrUpdaterHook):  lr = base * lr_gamma ** (number of lr_steps <= it)
    constant:                       lr = base
    linear warm-up (mmcv):          lr *= 1 - (1 - warmup_ratio) * (1 - it / warmup_iters)   for it < warmup
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from .config import TrainConfig


def build_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `model.param_groups` (the encoder, and an unfrozen text encoder, at lr x backbone_lr_mult;
    frozen parts excluded; no weight decay on norm parameters). Each group remembers its base lr as
    "initial_lr"."""
    if hasattr(model, "param_groups"):
        groups = model.param_groups(cfg.lr, cfg.weight_decay, backbone_lr_mult=cfg.backbone_lr_mult)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": params, "lr": cfg.lr, "lr_mult": 1.0}]
    if not any(g["params"] for g in groups):
        raise ValueError("the model has no trainable parameters with a non-zero learning rate")
    for g in groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_at(it: int, base_lr: float, cfg: TrainConfig) -> float:
    """Learning rate of a group with base lr `base_lr` for the (0-based) iteration `it`."""
    if cfg.schedule == "poly":
        coeff = (1.0 - min(it, cfg.max_iters) / cfg.max_iters) ** cfg.poly_power
        lr = (base_lr - cfg.min_lr) * coeff + cfg.min_lr
    elif cfg.schedule == "step":
        lr = base_lr * cfg.lr_gamma ** sum(it >= s for s in cfg.lr_steps)
    else:
        lr = base_lr
    if cfg.warmup_iters > 0 and it < cfg.warmup_iters:
        lr *= 1.0 - (1.0 - cfg.warmup_ratio) * (1.0 - it / cfg.warmup_iters)
    return lr


def set_lr(optimizer: torch.optim.Optimizer, it: int, cfg: TrainConfig) -> float:
    """Set every group's lr for iteration `it`; returns the nominal lr (that of multiplier 1)."""
    for g in optimizer.param_groups:
        g["lr"] = lr_at(it, g["initial_lr"], cfg)
    return lr_at(it, cfg.lr, cfg)


class Amp:
    """Autocast + (for fp16) a GradScaler.

        amp = Amp("bf16", device)
        with amp.autocast(): loss = model(x, y)["loss"]
        amp.backward(loss); amp.step(optimizer, params, grad_clip)
    """

    def __init__(self, mode: str, device: torch.device):
        self.mode, self.device = mode, device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        if mode == "fp16" and device.type == "cpu":
            warnings.warn("fp16 autocast on CPU is very slow on most CPUs; use train.amp=bf16", stacklevel=2)
        if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError("this GPU has no bf16 support; use train.amp=fp16")
        self.scaler = torch.amp.GradScaler(device.type, enabled=(mode == "fp16"))

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params, grad_clip: float | None) -> float | None:
        """Unscale, clip (if asked; returns the total norm before clipping), step, update the scale."""
        norm = None
        if grad_clip:
            self.scaler.unscale_(optimizer)
            norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
        self.scaler.step(optimizer)
        self.scaler.update()
        return norm

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)
