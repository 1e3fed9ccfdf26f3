"""Mixed precision for training: autocast, and a GradScaler for fp16."""

from __future__ import annotations

import contextlib
import warnings

import torch


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
