"""The web app's logic, without Gradio (app.py is the UI): uploads, limits, the model list, one request,
the files it writes, and the messages visitors read.

    from webapp import ModelRegistry, OutputFolders, default_specs, render, segment
    registry = ModelRegistry(default_specs(tiny=True))
    seg = segment(registry, "upload.jpg", "sky, tree, person")   # UserError: show its message
    out = render(seg, OutputFolders().new())                      # picture, score maps, label map, JSON
    detectors = ModelRegistry(detector_specs(tiny=True), max_loaded=1)
    out = render_detections(detection.detect(detectors, "upload.jpg"), OutputFolders().new())

- errors.py     UserError (a refused request, in the visitor's terms) and Note (a remark on a result)
- images.py     an upload's header read without decoding; refusal of what will not be decoded; decoding
- classes.py    the class box: separators, limits, presets spelled as words, checkpoint class matching
- catalog.py    the offered models (ZERO_SHOT_MODELS: one list), detectors, the tiny test models, unique
                names for the operator's checkpoints, Hub weight files
- hub.py        Hub checkpoints named by visitors: operator allow-list, size cap before download
- models.py     what a visitor may name, per-model load locks, availability, a small LRU of models
- pipeline.py   one request: checks, model, zero-shot or DenseCLIP prediction
- detection.py  one detection request (the Detect tab): checks, detector, boxes / masks, picture, JSON
- drawing.py    colours and class names on the picture; boxes, tags and masks of detections
- scoremaps.py  score maps over a faint photo, one colour scale, a colour bar with its unit
- outputs.py    the request's own folder: picture, score maps, label map, JSON
- results.py    a finished result reopened: recolour, any class's map, what is at a pixel, legend rows
- page.py       what the page says: operator banner, status line, legend HTML, escaping, CSS and scripts
"""

from . import detection
from .catalog import (
    TINY_DC,
    TINY_DETECTORS,
    TINY_ZS,
    ZERO_SHOT_MODELS,
    ModelSpec,
    ZeroShotModel,
    default_specs,
    detector_specs,
)
from .classes import MAX_CLASSES, MAX_TEXT_CHARS, PRESETS, parse_class_names, preset_text
from .detection import NO_DETECTOR, DetectOptions, render_detections
from .errors import Note, UserError
from .hub import HubAccess
from .images import MAX_PIXELS, MAX_SIDE, describe_upload
from .models import ModelRegistry
from .outputs import MAX_GALLERY, OutputFolders, Rendered, render
from .pipeline import TEMPLATE_CHOICES, UNMATCHED_CHOICES, Limits, Options, segment

__all__ = [
    "TINY_DC", "TINY_DETECTORS", "TINY_ZS", "ZERO_SHOT_MODELS", "ModelSpec", "ZeroShotModel", "default_specs",
    "detector_specs", "detection", "NO_DETECTOR", "DetectOptions", "render_detections",
    "MAX_CLASSES", "MAX_TEXT_CHARS", "PRESETS", "parse_class_names", "preset_text", "Note", "UserError",
    "HubAccess", "MAX_PIXELS", "MAX_SIDE", "describe_upload", "ModelRegistry", "MAX_GALLERY", "OutputFolders",
    "Rendered", "render", "TEMPLATE_CHOICES", "UNMATCHED_CHOICES", "Limits", "Options", "segment",
]
