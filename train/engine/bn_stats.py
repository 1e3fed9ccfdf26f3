"""BatchNorm running statistics from every micro-batch of every process (`train.bn_stats: all`).

Under DDP each process updates its BatchNorm running statistics from its own micro-batches only, and
DDP keeps rank 0's. One process with gradient accumulation instead folds in every micro-batch, one after
the other. With `train.bn_stats: all` each process records the batch statistics of its micro-batches;
after the iteration every process replays all of them in slot order (micro-step m of rank r is slot
m * world + r, the order one process with accumulation sees them in), so the running statistics equal
the single-process ones. The weights are equal either way; only the running statistics (used at eval
time) differ without it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class BatchNormReplay:
    """Records each BatchNorm's (mean, unbiased var) per training forward; `finish()` replays all ranks'."""

    def __init__(self, model: nn.Module, world_size: int):
        self.world_size = world_size
        self.norms = [m for m in model.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self.records: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in self.norms}
        self.start: dict[nn.Module, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for m in self.norms:
            m.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, inputs: tuple) -> None:
        if module.training and module in self.start:
            x = inputs[0].detach().float()
            dims = [0, *range(2, x.ndim)]
            self.records[module].append(torch.cat([x.mean(dims), x.var(dims, unbiased=True)]))

    def begin(self) -> None:
        """Remember the running statistics at the start of the iteration (the same on every rank)."""
        self.start = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                      for m in self.norms}
        for records in self.records.values():
            records.clear()

    def finish(self) -> None:
        """Set every rank's running statistics to the replay of all ranks' micro-batches, in slot order."""
        for m in self.norms:
            local = torch.stack(self.records[m])  # (micro-steps, 2C)
            parts = [torch.empty_like(local) for _ in range(self.world_size)]
            dist.all_gather(parts, local)
            slots = torch.stack(parts, dim=1).flatten(0, 1)  # micro-step m of rank r at m * world + r
            mean, var, tracked = (t.clone() for t in self.start[m])
            for stats in slots:
                tracked += 1
                momentum = 1.0 / float(tracked) if m.momentum is None else m.momentum
                batch_mean, batch_var = stats.to(mean.dtype).chunk(2)
                mean.mul_(1 - momentum).add_(momentum * batch_mean)
                var.mul_(1 - momentum).add_(momentum * batch_var)
            with torch.no_grad():
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(tracked)
        self.start = {}
