"""AdamW and its learning-rate schedule, as the DenseCLIP authors' mmcv recipe (mixed precision: amp.py).

The schedule is a pure function of the iteration (nothing to save or restore): every group's lr is
`lr_at(it, group["initial_lr"])`, set before each optimizer step.

    poly (mmcv PolyLrUpdaterHook):  lr = (base - min_lr) * (1 - it / max_iters) ** power + min_lr
    step (mmcv StepLrUpdaterHook):  lr = base * lr_gamma ** (number of lr_steps <= it)
    constant:                       lr = base
    linear warm-up (mmcv):          lr *= 1 - (1 - warmup_ratio) * (1 - it / warmup_iters)   for it < warmup
"""

from __future__ import annotations

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
