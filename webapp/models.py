"""The models a server offers, what a web user may name, and a small cache of loaded models.

A web user picks a label from the list, types a Hub repo id ("user/repo"; `allow_hub`), or the name of a
checkpoint inside the operator's `checkpoint_dir`. Absolute paths, "..", "~", backslashes and everything
outside that folder are refused: other server paths only come from the operator (`default_specs`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from denseclip.weights import CHECKPOINT_NAME, WeightsUnavailableError, download_checkpoint

from .inputs import UserError

log = logging.getLogger(__name__)

TINY_ZS = "Tiny zero-shot CLIP (untrained)"
TINY_DC = "Tiny DenseCLIP (untrained)"
ZERO_SHOT_MODELS = {  # label -> open_clip model name (OpenAI weights)
    "Zero-shot CLIP RN50 (OpenAI)": "RN50",
    "Zero-shot CLIP RN101 (OpenAI)": "RN101",
    "Zero-shot CLIP ViT-B/16 (OpenAI)": "ViT-B-16",
}
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass(frozen=True)
class ModelSpec:
    label: str
    kind: str  # "zeroshot" | "denseclip"
    source: str  # open_clip name, checkpoint path, Hub repo id, or "tiny"
    untrained: bool = False
    from_hub: bool = False  # a Hub repo id typed in the UI (downloaded by the app, never a server path)


def default_specs(tiny: bool, checkpoints: Sequence[str] = ()) -> list[ModelSpec]:
    """The model list: tiny untrained models first in --tiny mode, CLI checkpoints, the zero-shot CLIPs."""
    specs = []
    if tiny:
        specs += [ModelSpec(TINY_ZS, "zeroshot", "tiny", untrained=True),
                  ModelSpec(TINY_DC, "denseclip", "tiny", untrained=True)]
    for ckpt in checkpoints:
        name = Path(str(ckpt).rstrip("/")).name or str(ckpt)
        specs.append(ModelSpec(f"DenseCLIP: {name}", "denseclip", str(ckpt)))
    specs += [ModelSpec(label, "zeroshot", name) for label, name in ZERO_SHOT_MODELS.items()]
    return specs


def weights_help(spec: ModelSpec, error: Exception) -> str:
    """What is missing and how to provide it (first), then the library's own explanation."""
    if spec.kind == "zeroshot":
        return (f"Its weights (OpenAI CLIP {spec.source}) are not on this server and could not be downloaded "
                f"from the Hugging Face Hub. To provide them: put OpenAI's `{spec.source}.pt` (or "
                f"`{spec.source}-openai.safetensors`) in a folder and set `DENSECLIP_WEIGHTS_DIR` to it before "
                "starting the app, or let the server reach the Hub (unset `HF_HUB_OFFLINE`). For a DenseCLIP "
                "checkpoint: `python app.py --checkpoint PATH_OR_REPO`. To try the interface without weights: "
                f"`python app.py --tiny`.\n\nDetails: {error}")
    return str(error)


def hub_checkpoint_file(repo_id: str) -> str:
    """model.safetensors of a DenseCLIP Hub repo, from the cache or the Hub; fails fast offline.

    Unlike load_checkpoint(repo_id), never looks for a local path of that name (a web user typed it).
    """
    try:
        return str(download_checkpoint(repo_id))
    except WeightsUnavailableError as e:  # reworded for web users: they cannot "pass a path"
        cause = e.__cause__  # None: the Hub is unreachable; else the download's own error
        if cause is None:
            raise WeightsUnavailableError(
                f"The DenseCLIP checkpoint {repo_id!r} is not in this server's Hugging Face cache and the Hub "
                "is unreachable (or HF_HUB_OFFLINE=1). Download it on a connected machine, or ask the operator "
                "to start the app with --checkpoint PATH.") from None
        raise WeightsUnavailableError(f"Could not download {CHECKPOINT_NAME} from the Hub repo {repo_id!r}: "
                                      f"{type(cause).__name__}: {cause}") from cause


class ModelRegistry:
    """The models a person can pick, loaded once on first use and kept (least recently used dropped)."""

    def __init__(self, specs: Sequence[ModelSpec], checkpoint_dir: str | None = None, allow_hub: bool = True,
                 max_loaded: int = 2, device: str | None = None):
        self.specs: dict[str, ModelSpec] = {s.label: s for s in specs}
        self.checkpoint_dir = Path(checkpoint_dir).resolve() if checkpoint_dir else None
        self.allow_hub = allow_hub
        self.max_loaded = max(1, max_loaded)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._loaded: OrderedDict[ModelSpec, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()
        if self.checkpoint_dir is not None and self.checkpoint_dir.is_dir():
            for p in sorted(self.checkpoint_dir.iterdir()):
                if p.suffix in CHECKPOINT_SUFFIXES or (p.is_dir() and (p / CHECKPOINT_NAME).is_file()):
                    spec = ModelSpec(f"DenseCLIP: {p.name}", "denseclip", str(p))
                    self.specs.setdefault(spec.label, spec)

    @property
    def labels(self) -> list[str]:
        return list(self.specs)

    def resolve(self, choice: str | None) -> ModelSpec:
        """A list label, a checkpoint name inside checkpoint_dir, or a Hub repo id -> ModelSpec."""
        choice = (choice or "").strip()
        if not choice:
            return next(iter(self.specs.values()))
        if choice in self.specs:
            return self.specs[choice]
        local = self._in_checkpoint_dir(choice)
        if local is not None:
            return ModelSpec(f"DenseCLIP: {choice}", "denseclip", str(local))
        if self.allow_hub and REPO_ID.match(choice) and ".." not in choice:
            return ModelSpec(f"DenseCLIP: {choice} (Hub)", "denseclip", choice, from_hub=True)
        where = []
        if self.allow_hub:
            where.append("a Hugging Face Hub repo id of a DenseCLIP checkpoint ('user/repo')")
        if self.checkpoint_dir is not None:
            where.append("the name of a checkpoint file or folder in the server's checkpoint folder")
        extra = f", or {' or '.join(where)}" if where else ""
        raise UserError(f"Unknown model {choice[:80]!r}. Choose one from the list{extra}. Server paths are not "
                        "accepted here; the operator can add checkpoints with --checkpoint or DENSECLIP_CHECKPOINT_DIR.")

    def scrub(self, message: str) -> str:
        """The checkpoint folder's server path out of a message shown to web users."""
        if self.checkpoint_dir is not None:
            message = message.replace(str(self.checkpoint_dir), "<checkpoint folder>")
        return message

    def _in_checkpoint_dir(self, name: str) -> Path | None:
        if self.checkpoint_dir is None or "\x00" in name or "\\" in name:
            return None
        rel = Path(name)
        if rel.is_absolute() or name.startswith("~") or any(part in ("..", "") for part in rel.parts):
            return None
        path = self.checkpoint_dir / rel
        try:  # symlinks inside the folder are the operator's choice; lexically we never leave it
            return path if path.exists() else None
        except OSError:
            return None

    def get(self, spec: ModelSpec) -> torch.nn.Module:
        """The loaded model of `spec` (loads it on first use; keeps the `max_loaded` most recently used)."""
        with self._lock:
            if spec in self._loaded:
                self._loaded.move_to_end(spec)
                return self._loaded[spec]
            model = self._load(spec)
            self._loaded[spec] = model
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return model

    def _load(self, spec: ModelSpec) -> torch.nn.Module:
        from denseclip import build_model, create_clip, load_checkpoint

        t0 = time.perf_counter()
        if spec.kind == "zeroshot" and spec.source == "tiny":
            from denseclip.config import TINY_VIT_ARCH
            from denseclip.zeroshot import ZeroShotSegmenter

            # the same random model every start (stable screenshots); a tiny random ViT's maps vary more
            # across the image than a tiny random ResNet's, so the UI shows several classes
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                clip = create_clip("tiny", None, arch=TINY_VIT_ARCH)
            model = ZeroShotSegmenter(clip, "tiny", is_random=True, size=224).to(self.device)
        elif spec.kind == "zeroshot":
            from denseclip.zeroshot import ZeroShotSegmenter

            model = ZeroShotSegmenter.from_pretrained(spec.source, pretrained="openai", device=self.device)
        elif spec.source == "tiny":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = build_model("denseclip-tiny-rn", pretrained=False)
            model = model.to(self.device).eval()
        else:
            path = hub_checkpoint_file(spec.source) if spec.from_hub else spec.source
            model = load_checkpoint(path, device=self.device)
        log.info("loaded %s in %.1f s", spec.label, time.perf_counter() - t0)
        return model
