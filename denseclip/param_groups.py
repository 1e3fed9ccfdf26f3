"""Optimizer parameter groups for the authors' recipe (mmcv `paramwise_cfg` with `custom_keys`)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float, lr_mults: Mapping[str, float],
                 norm_decay: bool = False) -> list[dict]:
    """AdamW groups: each parameter takes the lr multiplier of the first prefix in `lr_mults` it starts with
    (1.0 if none); multiplier 0 means frozen (left out). Parameters that match no prefix and whose names
    contain "norm" get no weight decay -- mmcv applies only the first matching custom key, so the "norm"
    rule never reaches backbone or text-encoder parameters. Frozen (requires_grad=False) ones are left out.

    Returns [{"params", "lr", "lr_mult", "weight_decay"}, ...] (lr_mult lets schedulers rescale groups).
    """
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        prefix = next((k for k in lr_mults if name.startswith(k)), None)
        mult = lr_mults[prefix] if prefix is not None else 1.0
        if mult == 0.0:
            continue
        wd = 0.0 if (prefix is None and "norm" in name and not norm_decay) else weight_decay
        groups.setdefault((mult, wd), []).append(p)
    return [{"params": ps, "lr": lr * m, "lr_mult": m, "weight_decay": wd} for (m, wd), ps in groups.items()]


def backbone_param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float = 0.1,
                          norm_decay: bool = False) -> list[dict]:
    """AdamW groups as the authors' recipe, the `param_groups` method of the segmentor and the detector: the
    image encoder (and an unfrozen text encoder) at lr x backbone_lr_mult, no weight decay on parameters
    whose names contain "norm" outside those (as mmcv), the rest at lr."""
    at = next(name for name, m in model.named_modules() if hasattr(m, "encoder") and hasattr(m, "prompting"))
    at = f"{at}." if at else ""  # where the encoder and the prompting live: "" or "detector.backbone."
    mults = {f"{at}encoder.": backbone_lr_mult, f"{at}prompting.text_encoder.": backbone_lr_mult}
    return param_groups(model, lr, weight_decay, mults, norm_decay)
