"""The models a server offers, what a visitor may name, and a small cache of loaded models.

One class for every kind of model (zero-shot segmenters, DenseCLIP checkpoints, detectors): the app
keeps one registry of segmentation models and one of detectors. A visitor picks a label from the list,
names a checkpoint inside the operator's `checkpoint_dir`, or, if the operator allows it (`HubAccess`),
types a Hub repo id. Absolute paths, "..", "~", backslashes and everything outside that folder are
refused: other server paths only come from the operator.

Each model has its own load lock, so loading or downloading one model never delays requests for
another. `check()` tries every listed model once (in a background thread at start-up), so that models
whose weights are missing are marked before anyone presses Segment; detectors load on first use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from .catalog import PRETRAINED, ModelSpec
from .errors import UserError
from .hub import CHECKPOINT_FILE, REPO_ID, HubAccess, fetch_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")
RETRY_AFTER = 300.0  # seconds before a model that failed to load is tried again (a failed try costs CPU)


def operator_help(spec: ModelSpec, error: BaseException) -> str:
    """Why `spec` cannot be loaded and what the operator can do (server log and operator banner only)."""
    from denseclip import WeightsUnavailableError

    if spec.kind == "zeroshot" and isinstance(error, WeightsUnavailableError):
        return (f"{spec.label}: {spec.what} are not on this server and could not be downloaded. Put them "
                "in the folder named by DENSECLIP_WEIGHTS_DIR, or let the server reach the Hugging Face Hub "
                "(unset HF_HUB_OFFLINE); to try the interface without weights, start the app with --tiny.")
    return f"{spec.label} could not be loaded: {type(error).__name__}: {error}"


class ModelRegistry:
    """The models a person can pick, each loaded on first use and kept (the least recently used dropped)."""

    def __init__(self, specs: Sequence[ModelSpec], checkpoint_dir: str | None = None,
                 hub: HubAccess | None = None, max_loaded: int = 3, device: str | None = None):
        self.specs: dict[str, ModelSpec] = {s.label: s for s in specs}
        self.listed = list(self.specs)  # what check() tries (not every file of the checkpoint folder)
        self.checkpoint_dir = Path(checkpoint_dir).resolve() if checkpoint_dir else None
        self.hub = hub or HubAccess()
        self.max_loaded = max(1, max_loaded)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.failures: dict[str, str] = {}  # label -> operator_help of its last failed load
        self.retry_after = RETRY_AFTER
        self._failed_at: dict[str, float] = {}
        self._loaded: OrderedDict[ModelSpec, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()  # guards _loaded and _load_locks only (never held while loading)
        self._load_locks: dict[ModelSpec, threading.Lock] = {}
        if self.checkpoint_dir is not None and self.checkpoint_dir.is_dir():
            for p in sorted(self.checkpoint_dir.iterdir()):
                if p.suffix in CHECKPOINT_SUFFIXES or (p.is_dir() and (p / CHECKPOINT_FILE).is_file()):
                    spec = self._folder_spec(p.name, p)
                    self.specs[spec.label] = spec

    @property
    def labels(self) -> list[str]:
        return list(self.specs)

    @property
    def default(self) -> ModelSpec | None:
        """The first listed model (None: this registry offers none)."""
        return next(iter(self.specs.values()), None)

    def choices(self) -> list[tuple[str, str]]:
        """(shown, value) pairs for a dropdown: models whose load failed are marked unavailable."""
        return [(f"{label} (unavailable)" if label in self.failures else label, label)
                for label in self.specs]

    def resolve(self, choice: str | None) -> ModelSpec:
        """A list label, a checkpoint name inside checkpoint_dir, or an allowed Hub repo id -> ModelSpec."""
        choice = (choice or "").strip()
        if not choice:
            return self.default
        if choice in self.specs:
            return self.specs[choice]
        local = self._in_checkpoint_dir(choice)
        if local is not None:
            return self._folder_spec(choice, local)
        if REPO_ID.match(choice) and self.hub.allows(choice):
            return ModelSpec(f"DenseCLIP: {choice} (Hub)", "denseclip", choice, from_hub=True)
        if REPO_ID.match(choice) and self.hub.enabled:
            raise UserError(f"{choice} is not one of the Hub repos this server loads. Choose a model from "
                            "the list.")
        raise UserError(f"Unknown model '{choice[:80]}'. Choose one from the list.")

    def scrub(self, message: str) -> str:
        """The checkpoint folder's server path out of a message."""
        if self.checkpoint_dir is not None:
            message = message.replace(str(self.checkpoint_dir), "<checkpoint folder>")
        return message

    def _folder_spec(self, name: str, path: Path) -> ModelSpec:
        """The spec of a checkpoint in checkpoint_dir: the listed one for that file, else a new one whose
        label no other model has (an operator's --checkpoint may have the same file name)."""
        for spec in self.specs.values():
            if spec.kind == "denseclip" and spec.source == str(path):
                return spec
        label = f"DenseCLIP: {name}"
        if label in self.specs:
            label = f"DenseCLIP: {name} (checkpoint folder)"
        return ModelSpec(label, "denseclip", str(path))

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

    # ---------------------------------------------------------------------------------------- loading
    def get(self, spec: ModelSpec) -> torch.nn.Module:
        """The loaded model of `spec`, loading it on first use (only this spec's lock is held meanwhile).

        Raises what loading raises (WeightsUnavailableError, UserError for Hub refusals, ...), after
        recording it in `failures`; within `retry_after` seconds of a failure, raises at once.
        """
        with self._lock:
            if spec in self._loaded:
                self._loaded.move_to_end(spec)
                return self._loaded[spec]
            load_lock = self._load_locks.setdefault(spec, threading.Lock())
        with load_lock:
            with self._lock:
                if spec in self._loaded:  # loaded by another request while we waited
                    self._loaded.move_to_end(spec)
                    return self._loaded[spec]
            if time.monotonic() - self._failed_at.get(spec.label, -1e9) < self.retry_after:
                raise RuntimeError(f"{spec.label} failed to load less than {self.retry_after:.0f} s ago")
            try:
                model = self._load(spec)
            except UserError:
                raise
            except Exception as e:
                self.failures[spec.label] = self.scrub(operator_help(spec, e))
                self._failed_at[spec.label] = time.monotonic()
                raise
            self.failures.pop(spec.label, None)
            self._failed_at.pop(spec.label, None)
            with self._lock:
                self._loaded[spec] = model
                while len(self._loaded) > self.max_loaded:
                    self._loaded.popitem(last=False)
            return model

    def check(self) -> dict[str, str]:
        """Try to load every listed model not loaded yet (the default last, so that it stays loaded);
        returns `failures`. Meant for a background thread: requests are never blocked by it."""
        for label in [*self.listed[1:], *self.listed[:1]]:
            spec = self.specs[label]
            if label in self.failures:  # tried already (the default, at start-up)
                continue
            try:
                self.get(spec)
            except Exception as e:
                log.warning("%s", self.failures.get(label, f"{label}: {e}"))
        return dict(self.failures)

    def _load(self, spec: ModelSpec) -> torch.nn.Module:
        t0 = time.perf_counter()
        if spec.untrained:
            model = _tiny_detector(spec.source) if spec.kind == "detector" else _tiny_model(spec.kind)
        else:
            model = {"zeroshot": _zero_shot, "denseclip": _segmentation_checkpoint,
                     "detector": _detector}[spec.kind](spec, self.hub)
        model = model.to(self.device).eval()
        log.info("loaded %s in %.1f s", spec.label, time.perf_counter() - t0)
        return model


def _zero_shot(spec: ModelSpec, hub: HubAccess) -> torch.nn.Module:
    import denseclip

    options = {"method": spec.method} if spec.method else {}
    return denseclip.ZeroShotSegmenter.from_pretrained(spec.source, pretrained=PRETRAINED, **options)


def _segmentation_checkpoint(spec: ModelSpec, hub: HubAccess) -> torch.nn.Module:
    import denseclip

    path = fetch_checkpoint(spec.source, hub) if spec.from_hub else spec.source
    model = denseclip.load_checkpoint(path)
    cfg = getattr(model, "cfg", None)
    if not hasattr(cfg, "class_names") or not hasattr(cfg, "test"):
        raise ValueError(f"{Path(str(path)).name} is not a DenseCLIP segmentation checkpoint")
    return model


def _detector(spec: ModelSpec, hub: HubAccess) -> torch.nn.Module:
    """The operator's detector: the authors' mmdetection .pth, our saved folder / file, or a Hub repo."""
    import denseclip

    return denseclip.load_detector(spec.source)


def _tiny_model(kind: str) -> torch.nn.Module:
    """The same random tiny model every start (stable screenshots and tests)."""
    import denseclip
    from denseclip.clip import create_clip
    from denseclip.config import TINY_VIT_ARCH

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "denseclip":
            return denseclip.build_model("denseclip-tiny-rn", pretrained=False)
        # a tiny random ViT's maps vary more across an image than a tiny ResNet's: several classes show
        clip = create_clip("tiny", None, arch=TINY_VIT_ARCH)
        return denseclip.ZeroShotSegmenter(clip, "tiny", pretrained=None, size=224)


TINY_DETECTIONS = 8  # boxes a tiny detector returns (a readable picture)


def _tiny_detector(preset: str) -> torch.nn.Module:
    """A tiny random detector whose (meaningless) boxes show at the app's default threshold.

    With torchvision's initialisation an untrained RetinaNet scores every anchor 0.01 (its class prior)
    and an untrained Mask R-CNN every class about 1 / (K + 1), both below 0.3, and its masks sit at the
    0.5 cut: nothing would be drawn. The class prior is set to 0.5, the background logit lowered, and the
    mask logits raised, so that the interface has boxes, labels and masks to show.
    """
    import denseclip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = denseclip.build_detector(preset, pretrained=False, detections_per_img=TINY_DETECTIONS)
    det = model.detector
    with torch.no_grad():
        if model.is_retinanet:
            det.head.classification_head.cls_logits.bias.zero_()
        else:
            det.roi_heads.box_predictor.cls_score.bias[0] = -3.0
            det.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(1.0)
    return model
