"""The models a server offers, what a visitor may name, and the loaded models.

One class for every kind of model (zero-shot segmenters, DenseCLIP checkpoints, detectors): the app
keeps one registry of segmentation models and one of detectors. A visitor picks a label from the list,
names a checkpoint inside the operator's `checkpoint_dir`, or, if the operator allows it (`HubAccess`),
types a Hub repo id. Absolute paths, "..", "~", backslashes and everything outside that folder are
refused: other server paths only come from the operator.

Entries that share a backbone (NACLIP and ClearCLIP on one ViT-B/16) share one loaded model. Every
listed model stays loaded once loaded (the list is the operator's, so its size is known); models named
by visitors (checkpoint folder, Hub) share `max_extra` more places, the least recently used dropped.
Each backbone has its own load lock, so loading or downloading one never delays requests for another.
`check()` loads every listed model (in a background thread at start-up) and marks those that cannot
load, which the list then leaves out until their weights appear.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from denseclip.clip import resolve_dtype

from .catalog import TOY, WORKING_SIZE, ModelSpec, weights_on_disk
from .errors import UserError
from .hub import CHECKPOINT_FILE, REPO_ID, HubAccess, fetch_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")
RETRY_AFTER = 300.0  # seconds before a model that failed to load is tried again (a failed try costs CPU)
TOY_SIZE = 256  # the toy model's working size (its world's scenes are a few hundred pixels)


def operator_help(spec: ModelSpec, error: BaseException) -> str:
    """Why `spec` cannot be loaded and what the operator can do (server log only)."""
    from denseclip import WeightsUnavailableError

    if spec.kind == "zeroshot" and isinstance(error, WeightsUnavailableError):
        return (f"{spec.label}: {spec.what} are not on this server and could not be downloaded. Put them "
                "in the folder named by DENSECLIP_WEIGHTS_DIR, or let the server reach the Hugging Face Hub "
                "(unset HF_HUB_OFFLINE); meanwhile visitors get the other models.")
    return f"{spec.label} could not be loaded: {type(error).__name__}: {error}"


class ModelRegistry:
    """The models a person can pick, each loaded on first use (or by `check`) and kept."""

    def __init__(self, specs: Sequence[ModelSpec], checkpoint_dir: str | None = None,  # noqa: PLR0913
                 hub: HubAccess | None = None, device: str | None = None, dtype: str | torch.dtype = "auto",
                 max_extra: int = 2):
        self.specs: dict[str, ModelSpec] = {s.label: s for s in specs}
        self.listed = list(self.specs)  # what check() loads (not every file of the checkpoint folder)
        self.checkpoint_dir = Path(checkpoint_dir).resolve() if checkpoint_dir else None
        self.hub = hub or HubAccess()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_extra = max(1, max_extra)
        self.failures: dict[tuple, str] = {}  # backbone -> operator_help of its last failed load
        self.retry_after = RETRY_AFTER
        self._failed_at: dict[tuple, float] = {}
        self._had_weights: dict[tuple, bool] = {}  # whether the weights were on disk when loading failed
        self._kept: dict[tuple, torch.nn.Module] = {}  # the listed models' backbones
        self._extra: OrderedDict[tuple, torch.nn.Module] = OrderedDict()  # visitors' checkpoints (LRU)
        self._lock = threading.Lock()  # guards the dicts above only (never held while loading)
        self._load_locks: dict[tuple, threading.Lock] = {}
        if self.checkpoint_dir is not None and self.checkpoint_dir.is_dir():
            for p in sorted(self.checkpoint_dir.iterdir()):
                if p.suffix in CHECKPOINT_SUFFIXES or (p.is_dir() and (p / CHECKPOINT_FILE).is_file()):
                    spec = self._folder_spec(p.name, p)
                    self.specs[spec.label] = spec

    @property
    def labels(self) -> list[str]:
        return list(self.specs)

    def failed(self, label: str) -> bool:
        return self.specs[label].backbone in self.failures

    def loaded(self, label: str) -> bool:
        backbone = self.specs[label].backbone
        return backbone in self._kept or backbone in self._extra

    @property
    def default(self) -> ModelSpec | None:
        """The first listed model that is loaded; before any is, the first whose files are here (the toy
        model comes after those, before CLIP models still looking for their weights). None: none is left."""
        usable = [self.specs[label] for label in self.specs if not self.failed(label)]
        ready = [s for s in usable if self.loaded(s.label) and s.source != TOY]
        local = [s for s in usable if s.source != TOY and weights_on_disk(s)]
        toy = [s for s in usable if s.source == TOY]
        return (ready or local or toy or usable or [None])[0]

    def choices(self) -> list[str]:
        """What a visitor may pick: every model except those that could not be loaded."""
        return [label for label in self.specs if not self.failed(label)]

    def resolve(self, choice: str | None) -> ModelSpec:
        """A list label, a checkpoint name inside checkpoint_dir, or an allowed Hub repo id -> ModelSpec."""
        choice = (choice or "").strip() if isinstance(choice, (str, type(None))) else choice
        if not isinstance(choice, str):
            raise UserError(f"model must be the name of a model, not {choice!r}.")
        if not choice:
            if self.default is None:
                raise UserError("No model is available on this server right now. Try again later.")
            return self.default
        if choice in self.specs:
            return self.specs[choice]
        local = self._in_checkpoint_dir(choice)
        if local is not None:
            return self._folder_spec(choice, local)
        if REPO_ID.match(choice) and self.hub.allows(choice):
            return ModelSpec(f"DenseCLIP: {choice} (Hub)", "denseclip", choice, pretrained=choice,
                             from_hub=True)
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
        return ModelSpec(label, "denseclip", str(path), pretrained=str(path))

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
    def _cached(self, key: tuple) -> torch.nn.Module | None:
        with self._lock:
            if key in self._extra:
                self._extra.move_to_end(key)
                return self._extra[key]
            return self._kept.get(key)

    def get(self, spec: ModelSpec) -> torch.nn.Module:
        """The loaded model of `spec`'s backbone, loading it on first use (only its lock held meanwhile).

        Raises what loading raises (WeightsUnavailableError, UserError for Hub refusals, ...), after
        recording it in `failures`; within `retry_after` seconds of a failure, raises at once.
        """
        key = spec.backbone
        model = self._cached(key)
        if model is not None:
            return model
        with self._lock:
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            model = self._cached(key)  # loaded by another request while we waited
            if model is not None:
                return model
            if time.monotonic() - self._failed_at.get(key, -1e9) < self.retry_after:
                raise RuntimeError(f"{spec.label} failed to load less than {self.retry_after:.0f} s ago")
            try:
                model = self._load(spec)
            except UserError:
                raise
            except Exception as e:
                self.failures[key] = self.scrub(operator_help(spec, e))
                self._failed_at[key] = time.monotonic()
                self._had_weights[key] = weights_on_disk(spec)
                raise
            self.failures.pop(key, None)
            self._failed_at.pop(key, None)
            with self._lock:
                if any(self.specs[label].backbone == key for label in self.listed):
                    self._kept[key] = model
                else:
                    self._extra[key] = model
                    while len(self._extra) > self.max_extra:
                        self._extra.popitem(last=False)
            return model

    def check(self) -> dict[str, str]:
        """Load every listed model not loaded yet (the toy model first: it is the offline default), and
        try failed ones again when `_retry_due`; returns {label: operator text} of those that failed.
        For a background thread: requests are never blocked by it (a backbone loads once, whoever asks)."""
        order = sorted(self.listed, key=lambda label: self.specs[label].source != TOY)
        for label in order:
            spec = self.specs[label]
            if spec.backbone in self.failures:
                if not self._retry_due(spec):
                    continue
                self._failed_at.pop(spec.backbone, None)
            try:
                self.get(spec)
            except Exception as e:
                log.warning("%s", self.failures.get(spec.backbone, f"{label}: {e}"))
        return {label: self.failures[self.specs[label].backbone] for label in self.listed
                if self.failed(label)}

    def _retry_due(self, spec: ModelSpec) -> bool:
        """A failed model is tried again as soon as its missing weights appear on disk, or after
        `retry_after` seconds when the Hub may be asked."""
        from huggingface_hub import constants

        key = spec.backbone
        if not self._had_weights.get(key, True) and weights_on_disk(spec):
            return True
        waited = time.monotonic() - self._failed_at.get(key, -1e9) >= self.retry_after
        return waited and not constants.HF_HUB_OFFLINE

    def watch(self, stop: threading.Event, every: float = 30.0) -> None:
        """check() now, then every `every` seconds until `stop` is set: models whose weights appear
        join the list without a restart."""
        while True:
            self.check()
            if stop.wait(every):
                return

    def _load(self, spec: ModelSpec) -> torch.nn.Module:
        t0 = time.perf_counter()
        if spec.kind == "zeroshot":
            model = _zero_shot(spec, self.device, self.dtype)
        elif spec.pretrained is None:
            model = _tiny_detector(spec.source) if spec.kind == "detector" else _tiny_denseclip()
        elif spec.kind == "denseclip":
            model = _segmentation_checkpoint(spec, self.hub)
        else:
            model = _detector(spec)
        model = model.to(self.device).eval()
        log.info("loaded %s in %.1f s%s", spec.label, time.perf_counter() - t0, _precision(model))
        return model


def _precision(model) -> str:
    from denseclip import ZeroShotSegmenter

    if isinstance(model, ZeroShotSegmenter):
        return f", computing in {str(model.dtype).removeprefix('torch.')}"
    return ""


def _zero_shot(spec: ModelSpec, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A zero-shot segmenter per backbone (every method of its tower, chosen per request): OpenAI's CLIP
    in `dtype`, the toy micro-CLIP, or a tiny random one."""
    from denseclip import ZeroShotSegmenter

    if spec.source == TOY:
        from denseclip import toy

        return ZeroShotSegmenter(toy.toy_clip(), toy.TOY_CLIP_NAME, pretrained=TOY,
                                 method="maskclip", size=TOY_SIZE)
    if spec.pretrained is None:
        return _tiny_zero_shot()
    size = {"size": WORKING_SIZE[spec.source]} if spec.source in WORKING_SIZE else {}
    return ZeroShotSegmenter.from_pretrained(spec.source, pretrained=spec.pretrained, device=device,
                                             dtype=dtype, **size)


def _segmentation_checkpoint(spec: ModelSpec, hub: HubAccess) -> torch.nn.Module:
    import denseclip

    path = fetch_checkpoint(spec.source, hub) if spec.from_hub else spec.source
    model = denseclip.load_checkpoint(path)
    cfg = getattr(model, "cfg", None)
    if not hasattr(cfg, "class_names") or not hasattr(cfg, "test"):
        raise ValueError(f"{Path(str(path)).name} is not a DenseCLIP segmentation checkpoint")
    return model


def _detector(spec: ModelSpec) -> torch.nn.Module:
    """The operator's detector: the authors' mmdetection .pth, our saved folder / file, or a Hub repo."""
    import denseclip

    return denseclip.load_detector(spec.source)


def _tiny_zero_shot() -> torch.nn.Module:
    """The same random tiny ViT every start (stable screenshots and tests): its maps vary more across an
    image than a tiny ResNet's, so several classes show."""
    from denseclip import ZeroShotSegmenter
    from denseclip.clip import create_clip
    from denseclip.config import TINY_VIT_ARCH

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = create_clip("tiny", None, arch=TINY_VIT_ARCH)
    return ZeroShotSegmenter(clip, "tiny", pretrained=None, size=224)


def _tiny_denseclip() -> torch.nn.Module:
    import denseclip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return denseclip.build_model("denseclip-tiny-rn", pretrained=False)


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
