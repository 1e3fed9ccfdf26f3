"""Run logging on rank 0: a tqdm progress bar, TensorBoard scalars, a text log, JSON-lines scalars.

    log = RunLogger(work_dir, env, max_iters, start_iter)
    log.scalars(it, {"loss": 0.7, "lr": 1e-4}); log.info("..."); log.advance(1); log.close()

Other ranks get a logger that does nothing, so callers never branch on the rank.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA max allocated on GPU, max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class RunLogger:
    def __init__(self, work_dir: Path | None, env, max_iters: int, start_iter: int = 0,
                 tensorboard: bool = True, progress: bool = True):
        self.enabled = env.is_main
        self.work_dir = Path(work_dir) if work_dir else None
        self.tb = self.bar = self._text = self._jsonl = None
        if not self.enabled:
            return
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._text = open(self.work_dir / "log.txt", "a", encoding="utf-8")
            self._jsonl = open(self.work_dir / "scalars.jsonl", "a", encoding="utf-8")
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(self.work_dir / "tb"), purge_step=start_iter or None)
                except ImportError:
                    self.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=max_iters, initial=start_iter, desc="train", dynamic_ncols=True,
                            mininterval=1.0, file=sys.stderr)

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)
        if self._text:
            self._text.write(line + "\n")
            self._text.flush()

    def scalars(self, it: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, it)
        if self._jsonl:
            self._jsonl.write(json.dumps({"iter": it, "prefix": prefix, **clean}) + "\n")
            self._jsonl.flush()
        if self.bar is not None and prefix == "train":
            shown = {k: f"{v:.4g}" for k, v in clean.items() if k in ("loss", "lr")}
            self.bar.set_postfix(shown, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        for h in (self.bar, self.tb, self._text, self._jsonl):
            if h is not None:
                h.close()
        self.bar = self.tb = self._text = self._jsonl = None
