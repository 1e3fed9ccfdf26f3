"""A running app's state, without Gradio: the models it offers (the toy model when no CLIP weights are on
the machine), the detectors, the limits and the result folders; and what it does besides requests (load
and watch the models, embed the preset class lists, give memory back after each request).

    service = Service.create(AppConfig.parse(), files="/tmp/gradio")   # files: where results are served
    stop = service.start_background()                                  # threading.Event to stop it
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from .catalog import TOY, default_specs, detector_specs, weights_on_disk
from .classes import PRESETS
from .config import AppConfig
from .hub import HubAccess
from .models import ModelRegistry
from .outputs import OutputFolders
from .pipeline import Limits, warm_text

log = logging.getLogger(__name__)


@dataclass
class Service:
    config: AppConfig
    registry: ModelRegistry  # segmentation models
    detectors: ModelRegistry
    limits: Limits
    folders: OutputFolders
    toy: bool  # the toy model is offered (no CLIP weights were on the machine at start)

    @classmethod
    def create(cls, config: AppConfig, files: str | Path | None = None) -> Service:
        """The models and folders for `config`; nothing is loaded yet (see start_background)."""
        toy = not config.tiny and not any(weights_on_disk(s) for s in default_specs(False))
        if toy:
            log.info("No CLIP weights on this machine: the toy micro-CLIP serves visitors meanwhile. Put "
                     "OpenAI's CLIP weights in the Hugging Face cache or in DENSECLIP_WEIGHTS_DIR (a Space "
                     "preloads them).")
        hub = HubAccess.parse(config.hub_allow, config.hub_max_mb)
        specs = default_specs(config.tiny, config.checkpoints, toy=toy)
        registry = ModelRegistry(specs, config.checkpoint_dir, hub, config.device, config.dtype)
        detectors = ModelRegistry(detector_specs(config.tiny, config.detectors), device=config.device,
                                  dtype=config.dtype, max_extra=1)
        if not detectors.specs:
            log.info("No detector configured: the Detect tab is hidden (--detector or DENSECLIP_DETECTORS).")
        log.info("CLIP models compute in %s on %s", str(registry.dtype).removeprefix("torch."),
                 registry.device)
        return cls(config, registry, detectors, Limits(config.max_side, config.max_pixels),
                   OutputFolders(files, config.output_mb * 1e6), toy)

    @property
    def toy_default(self) -> bool:
        """The toy model is the default now (no CLIP model is ready)."""
        default = self.registry.default
        return default is not None and default.source == TOY

    def start_background(self) -> threading.Event:
        """Load every offered model, embed the preset class lists, then keep looking for models whose
        weights appear, in a daemon thread; returns the event that stops it."""
        stop = threading.Event()

        def work():
            self.registry.check()
            try:
                count = warm_text(self.registry, list(PRESETS.values()))
                log.info("embedded %d preset class names in the background", count)
            except Exception:
                log.exception("embedding the preset class lists failed")
            self.registry.watch(stop)

        threading.Thread(target=work, name="models", daemon=True).start()
        return stop


def _malloc_trim():
    """glibc's malloc_trim: give the memory a finished request freed back to the system (requests run in
    many worker threads, whose malloc arenas otherwise keep their high-water mark). No-op elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return lambda: None
    return lambda: libc.malloc_trim(0)


release_memory = _malloc_trim()
