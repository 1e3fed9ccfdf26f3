"""Process-group setup for `torchrun` (single node or many), and small collective helpers.

    env = init_distributed()          # reads RANK / WORLD_SIZE / LOCAL_RANK set by torchrun
    with distributed_session(device) as env: ...   # the same, and the process group is left at the end
    accum = accumulation_steps(total_batch=32, batch_size=4, world_size=env.world_size)

NCCL on GPUs, gloo on CPU. Without torchrun everything degrades to a single process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistEnv:
    """Join the process group torchrun describes (env://), pick the device and backend.

    device: "cuda", "cpu" or None (CUDA when available).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    backend = None
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            kwargs = {"device_id": dev} if use_cuda else {}
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, **kwargs)
    return DistEnv(rank, world, local_rank, dev, backend)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed_session(device: str | None = None) -> Iterator[DistEnv]:
    """init_distributed(device) for the body of a `with`; the process group is destroyed on the way out."""
    try:
        yield init_distributed(device)
    finally:
        cleanup_distributed()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        if env.backend == "nccl":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def accumulation_steps(total_batch: int, batch_size: int, world_size: int) -> int:
    """Micro-steps per optimizer step so that batch_size x world_size x steps == total_batch."""
    per_step = batch_size * world_size
    if total_batch % per_step:
        ok = sorted({b for b in range(1, total_batch + 1) if total_batch % (b * world_size) == 0})
        raise ValueError(f"train.total_batch={total_batch} is not a multiple of batch_size x world_size = "
                         f"{batch_size} x {world_size}; pick train.batch_size from {ok} "
                         "(or change total_batch)")
    return total_batch // per_step


def all_reduce_mean(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Mean of scalar values over processes (one collective)."""
    if not env.distributed or not values:
        return dict(values)
    keys = list(values)  # the same insertion order on every rank
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return {k: float(v) / env.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def broadcast_error(error: BaseException | None, env: DistEnv) -> None:
    """Make every rank fail when any did (e.g. dataset validation runs on rank 0 only; a node may
    lack the data folder). Each rank passes its own exception or None; one collective."""
    if not env.distributed:
        if error is not None:
            raise error
        return
    msgs: list = [None] * env.world_size
    dist.all_gather_object(msgs, f"{type(error).__name__}: {error}" if error is not None else None)
    if error is not None:
        raise error
    failed = [(rank, m) for rank, m in enumerate(msgs) if m is not None]
    if failed:
        rank, msg = failed[0]
        raise RuntimeError(f"rank {rank} failed before training: {msg}")


def on_every_rank(env: DistEnv, fn: Callable[..., T], *args) -> T:
    """fn(*args) on every rank; if it raises on any rank, every rank raises (broadcast_error)."""
    result, error = None, None
    try:
        result = fn(*args)
    except Exception as e:  # noqa: BLE001 (re-raised on every rank)
        error = e
    broadcast_error(error, env)
    return result


def broadcast_from_main(obj: T, env: DistEnv) -> T:
    """Rank 0's `obj` (a picklable value) on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module, env: DistEnv) -> None:
    """Give every rank rank 0's buffers (BN running stats), the ones its checkpoints hold.

    DDP broadcasts buffers at the start of each forward, so after the last training step the ranks'
    running statistics differ by that step's update; evaluate with the saved ones everywhere."""
    if env.distributed:
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)
