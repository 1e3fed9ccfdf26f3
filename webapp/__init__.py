"""The web app's logic, without Gradio (app.py is the UI): the configuration, uploads, limits, the model
list, one request, the files it writes, and the messages visitors read.

    from webapp import ModelRegistry, OutputFolders, default_specs, render, segment
    registry = ModelRegistry(default_specs(tiny=True))
    seg = segment(registry, "upload.jpg", "sky, tree, person")   # UserError: show its message
    out = render(seg, OutputFolders().new())                      # picture, score maps, label map, JSON
    detectors = ModelRegistry(detector_specs(tiny=True))
    out = render_detections(detection.detect(detectors, "upload.jpg"), OutputFolders().new())

- config.py     AppConfig: every flag with its environment variable and default, in one place
- errors.py     UserError (a refused request, in the visitor's terms) and Note (a remark on a result)
- images.py     an upload's header read without decoding; refusal of what will not be decoded; decoding
- classes.py    the class box: separators, limits, presets spelled as words, checkpoint class matching
- catalog.py    the offered models (ZERO_SHOT_MODELS: one list; the toy model offline), detectors, the
                tiny test models, unique names for the operator's checkpoints, what a Space preloads
- examples.py   the examples: public-domain photos, and toy-world scenes for the offline model
- hub.py        Hub checkpoints named by visitors: operator allow-list, visitor messages
- models.py     what a visitor may name, one loaded model per backbone, availability, load locks
- pipeline.py   one request: checks, image, model, zero-shot or DenseCLIP prediction; text warm-up
- detection.py  one detection request (the Detect tab): checks, detector, boxes / masks, picture, JSON
- drawing.py    class names on the picture; boxes, tags and masks of detections
- scoremaps.py  score maps over a faint photo, one colour scale
- outputs.py    the request's own folder (bounded on disk): picture, score maps, label map, JSON
- results.py    a finished result reopened: recolour, any class's map, what is at a pixel, legend rows
- likeness.py   find more like this: a point's dense embedding against every other
- page.py       what the page says: ready models, model hint, status line, legend HTML, CSS and scripts
"""

from . import detection
from .catalog import (
    TINY_DC,
    TINY_DETECTORS,
    TINY_ZS,
    ZERO_SHOT_MODELS,
    ModelSpec,
    default_specs,
    detector_specs,
)
from .classes import MAX_CLASSES, MAX_TEXT_CHARS, PRESETS, parse_class_names, preset_text
from .config import AppConfig
from .detection import NO_DETECTOR, DetectOptions, render_detections
from .errors import Note, UserError
from .hub import HubAccess
from .images import describe_upload
from .models import ModelRegistry
from .outputs import FIRST_MAPS, OutputFolders, Rendered, render
from .pipeline import TEMPLATE_CHOICES, UNMATCHED_CHOICES, Limits, Options, segment

__all__ = [
    "TINY_DC", "TINY_DETECTORS", "TINY_ZS", "ZERO_SHOT_MODELS", "ModelSpec", "default_specs",
    "detector_specs", "detection", "AppConfig", "NO_DETECTOR", "DetectOptions", "render_detections",
    "MAX_CLASSES", "MAX_TEXT_CHARS", "PRESETS", "parse_class_names", "preset_text", "Note", "UserError",
    "HubAccess", "describe_upload", "ModelRegistry", "FIRST_MAPS", "OutputFolders", "Rendered", "render",
    "TEMPLATE_CHOICES", "UNMATCHED_CHOICES", "Limits", "Options", "segment",
]
