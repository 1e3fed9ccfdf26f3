"""Deterministic, resumable data order and randomness for (distributed) training.

The training data is one infinite stream: epoch e is a permutation of the dataset seeded by
(seed, e), and stream position g is consumed by exactly one process. Iteration `it` takes positions
[it * T, (it + 1) * T) with T = total_batch; micro-step m of rank r takes the slice
    it * T + (m * world + r) * batch_size + [0, batch_size).
Sample g is augmented with an RNG seeded by (seed, g). So the images and their augmentation depend
only on (seed, iteration), never on the world size, the number of workers or on restarts: a run
resumed at iteration k (start_iter=k) sees exactly what an uninterrupted one would, and 2 GPUs x
batch 2 see the same pixels as 1 GPU x batch 2 x 2 accumulation steps.

Model-side randomness (dropout, drop path) is reseeded per micro-batch slot with `step_seed`.
We do not use torch's DistributedSampler: it cannot resume in the middle of an epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

# stream names, so different uses of the same seed never share random numbers
_PERMUTATION, _AUGMENT, _STEP, _INIT = 1, 2, 3, 4


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, purpose, indices...), well mixed by numpy's SeedSequence."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def init_seed(seed: int) -> int:
    """Seed for building the model (random init of contexts, decoders): the same on every rank."""
    return derive_seed(seed, _INIT)


def step_seed(seed: int, iteration: int, slot: int) -> int:
    """Seed of the model's RNG (dropout) for micro-batch `slot` = micro_step * world + rank of `iteration`."""
    return derive_seed(seed, _STEP, iteration, slot)


class InfiniteSampler(Sampler[int]):
    """This rank's stream positions, iteration after iteration, from `start_iter` (to `max_iters`)."""

    def __init__(self, total_batch: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 start_iter: int = 0, max_iters: int | None = None):
        if total_batch % (batch_size * world_size):
            raise ValueError(f"total_batch {total_batch} is not a multiple of {batch_size} x {world_size}")
        self.total_batch, self.batch_size = total_batch, batch_size
        self.world_size, self.rank = world_size, rank
        self.accumulation = total_batch // (batch_size * world_size)
        self.start_iter, self.max_iters = start_iter, max_iters

    def positions(self, iteration: int, micro_step: int) -> range:
        start = iteration * self.total_batch + (micro_step * self.world_size + self.rank) * self.batch_size
        return range(start, start + self.batch_size)

    def __iter__(self) -> Iterator[int]:
        it = self.start_iter
        while self.max_iters is None or it < self.max_iters:
            for m in range(self.accumulation):
                yield from self.positions(it, m)
            it += 1

    def __len__(self) -> int:  # DataLoader asks; an unbounded stream reports a large number
        if self.max_iters is None:
            return 2**62
        return max(self.max_iters - self.start_iter, 0) * self.accumulation * self.batch_size


class StreamDataset(Dataset):
    """Maps stream position g -> (dataset sample of epoch permutation, augmented with RNG (seed, g)).

    transform(image uint8 (H, W, 3), label (H, W), rng) -> (image tensor, label tensor).
    """

    def __init__(self, dataset, transform: Callable, seed: int = 0, shuffle: bool = True):
        self.dataset, self.transform, self.seed, self.shuffle = dataset, transform, int(seed), shuffle
        self.n = len(dataset)

    @lru_cache(maxsize=2)  # noqa: B019 (one dataset object per run; two epochs in flight at a boundary)
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, _PERMUTATION, epoch]).permutation(self.n)

    def index_at(self, g: int) -> int:
        epoch, pos = divmod(int(g), self.n)
        return int(self._permutation(epoch)[pos]) if self.shuffle else pos

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, g: int):
        sample = self.dataset[self.index_at(g)]
        rng = np.random.default_rng([self.seed, _AUGMENT, int(g)])
        return self.transform(sample["image"], sample["label"], rng)


def build_train_loader(dataset, transform: Callable, cfg, env, start_iter: int,
                       collate_fn: Callable | None = None) -> DataLoader:
    """This rank's micro-batches from iteration `start_iter` to cfg.max_iters (cfg: a TrainConfig).

    dataset[i] -> {"image": ..., "label": ...} (raw); transform(image, label, rng) -> one sample;
    collate_fn: how samples become a batch (default: stacked tensors, e.g. images (b, 3, c, c) and
    labels (b, c, c); detection passes one that keeps lists of differently sized images and targets).
    """
    sampler = InfiniteSampler(cfg.total_batch, cfg.batch_size, env.world_size, env.rank, start_iter,
                              cfg.max_iters)
    stream = StreamDataset(dataset, transform, cfg.seed)
    return DataLoader(stream, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      collate_fn=collate_fn, pin_memory=env.device.type == "cuda", drop_last=False,
                      persistent_workers=False, prefetch_factor=4 if cfg.workers > 0 else None,
                      generator=torch.Generator().manual_seed(cfg.seed))
