"""Training checkpoints: weights as safetensors (`denseclip.save_checkpoint`) + a state file.

    work_dir/checkpoints/iter_0008000/model.safetensors   weights + model config (loadable on its own)
                                     /config.json
                                     /state.pt            optimizer, scaler, iteration, RNG states, best
    work_dir/checkpoints/latest.txt                       name of the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed when complete, so a run killed
while saving leaves the previous checkpoint intact. The state file holds only tensors and plain
Python values and is read back with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from denseclip.checkpoints import CHECKPOINT_NAME, atomic_path, load_state_checked, save_checkpoint

STATE_NAME = "state.pt"
WEIGHTS_NAME = CHECKPOINT_NAME
LATEST_NAME = "latest.txt"


def rng_state() -> dict:
    """Python, numpy and torch (CPU + CUDA) global RNG states, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def is_complete(folder: Path) -> bool:
    return (folder / STATE_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def save_training_checkpoint(model, folder: Path, state: dict, metadata: dict | None = None) -> Path:
    """Write weights + state into `folder` atomically (a temporary folder, renamed when complete)."""
    with atomic_path(folder) as tmp:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        save_checkpoint(model, tmp, metadata)
        torch.save(state, tmp / STATE_NAME)
        shutil.rmtree(folder, ignore_errors=True)  # the same iteration, saved again after a resume
    return folder


def find_latest(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint folder in `ckpt_dir` (latest.txt first, then a scan)."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / LATEST_NAME
    if pointer.is_file():
        cand = ckpt_dir / pointer.read_text("utf-8").strip()
        if cand.name and is_complete(cand):
            return cand
    found = sorted((p for p in ckpt_dir.glob("iter_*") if p.is_dir() and not p.name.endswith(".tmp")
                    and is_complete(p)), key=lambda p: p.name)
    return found[-1] if found else None


def resolve_resume(resume: str | None, work_dir: Path) -> Path | None:
    """--resume (no value, "latest") -> the latest checkpoint in work_dir/checkpoints, which must exist;
    --resume auto -> that checkpoint if there is one, else a fresh start (for job schedulers that restart
    the same command); --resume PATH -> that checkpoint folder (or a work dir: its latest checkpoint)."""
    if not resume:
        return None
    if resume in ("latest", "auto"):
        found = find_latest(Path(work_dir) / "checkpoints")
        if found is None and resume == "latest":
            raise FileNotFoundError(f"--resume: no complete checkpoint in {Path(work_dir) / 'checkpoints'}; "
                                    "check --work-dir, give a checkpoint folder (--resume PATH), or pass "
                                    "--resume auto to start fresh when there is none")
        return found
    path = Path(resume)
    if path.is_dir() and is_complete(path):
        return path
    if path.is_dir():
        latest = find_latest(path / "checkpoints") or find_latest(path)
        if latest is not None:
            return latest
    raise FileNotFoundError(f"--resume {resume}: no complete checkpoint there (a folder with {WEIGHTS_NAME} "
                            f"and {STATE_NAME}, or a work dir holding checkpoints/iter_*)")


def load_training_state(folder: Path, map_location="cpu") -> dict:
    return torch.load(Path(folder) / STATE_NAME, map_location=map_location, weights_only=True)


def load_weights_into(model, folder: Path) -> None:
    """Load model.safetensors of a checkpoint into `model` (every tensor must match, by name and shape)."""
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_NAME
    load_state_checked(model, load_file(str(path)), str(path))


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` iteration checkpoints."""
    found = sorted((p for p in Path(ckpt_dir).glob("iter_*") if p.is_dir() and not p.name.endswith(".tmp")),
                   key=lambda p: p.name)
    for old in found[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def write_checkpoint(model, work_dir: Path, iteration: int, state: dict, keep: int) -> Path:
    """Save iteration checkpoint, point latest.txt at it, prune old ones. Rank 0 only."""
    ckpt_dir = Path(work_dir) / "checkpoints"
    folder = save_training_checkpoint(model, ckpt_dir / checkpoint_name(iteration), state,
                                      {"iteration": iteration})
    with atomic_path(ckpt_dir / LATEST_NAME) as tmp:
        tmp.write_text(folder.name, "utf-8")
    prune_checkpoints(ckpt_dir, keep)
    return folder
