"""The web app's logic, beside app.py and without Gradio: serving DenseCLIP to untrusted users.

    import webapp
    registry = webapp.ModelRegistry(webapp.default_specs(tiny=True), checkpoint_dir="ckpts")
    seg = webapp.segment(registry, "upload.jpg", "sky, tree, person")   # UserError: show its message
    out = webapp.render(seg, webapp.OutputFolders().new())              # gallery, chart, PNG, JSON

- image_guard.py  an untrusted image file's header: refuse before decoding

- inputs.py    the class-name box and uploaded images: limits, cleaning, header checks, safe decoding
- models.py    the model list, what a web user may name (no server paths), a small LRU cache of models
- pipeline.py  one request: checks, model, zero-shot or DenseCLIP prediction (a subset of its classes)
- outputs.py   colours, mask layers, score-map gallery, coverage chart, label-map PNG, per-class JSON
"""

from .inputs import (
    MAX_CLASSES,
    MAX_NAME_CHARS,
    MAX_PIXELS,
    MAX_SIDE,
    MAX_TEXT_CHARS,
    UserError,
    parse_class_names,
    preset_text,
    read_image,
)
from .models import (
    TINY_DC,
    TINY_ZS,
    ZERO_SHOT_MODELS,
    ModelRegistry,
    ModelSpec,
    default_specs,
    hub_checkpoint_file,
    weights_help,
)
from .outputs import (
    MAX_GALLERY,
    MAX_LEGEND,
    ClassStats,
    OutputFolders,
    Rendered,
    class_palette,
    class_stats,
    coverage_image,
    label_map_image,
    mask_layers,
    render,
    score_gallery,
)
from .pipeline import (
    TEMPLATE_CHOICES,
    Prediction,
    Segmentation,
    load_model,
    match_classes,
    run_denseclip,
    run_zeroshot,
    segment,
)

__all__ = [
    "MAX_CLASSES", "MAX_NAME_CHARS", "MAX_PIXELS", "MAX_SIDE", "MAX_TEXT_CHARS",
    "UserError", "parse_class_names", "preset_text", "read_image",
    "TINY_DC", "TINY_ZS", "ZERO_SHOT_MODELS", "ModelRegistry", "ModelSpec", "default_specs",
    "hub_checkpoint_file", "weights_help",
    "MAX_GALLERY", "MAX_LEGEND", "ClassStats", "OutputFolders", "Rendered", "class_palette", "class_stats",
    "coverage_image", "label_map_image", "mask_layers", "render", "score_gallery",
    "TEMPLATE_CHOICES", "Prediction", "Segmentation", "load_model", "match_classes", "run_denseclip",
    "run_zeroshot", "segment",
]
