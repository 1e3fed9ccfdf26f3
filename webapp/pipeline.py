"""One request, start to end: check the inputs, load the model, predict; a zero-shot CLIP or a checkpoint.

    seg = segment(registry, "photo.jpg", "sky, tree, person")   # raises UserError with a message to show
    seg.pred.labels (H, W), seg.pred.maps (K, h, w), seg.notes
"""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from denseclip.inference import predict
from denseclip.vocab import get_templates
from denseclip.weights import WeightsUnavailableError

from .inputs import MAX_PIXELS, MAX_SIDE, UserError, parse_class_names, read_image
from .models import ModelRegistry, ModelSpec, weights_help
from .outputs import GALLERY_SIDE

log = logging.getLogger(__name__)

TEMPLATE_CHOICES = {
    "auto": "auto (7 prompts a class; 1 above 40 classes)",
    "single": "single ('a photo of a {}.')",
    "simple": "simple (7 scene prompts)",
    "imagenet": "imagenet (CLIP's 80 prompts, slow)",
}
AUTO_TEMPLATE_LIMIT = 40  # "auto" templates: 7 prompts a class up to this many classes, then 1
MAX_PROMPTS = 6000  # class names x templates encoded in one request (CLIP's text tower is slow on CPU)
MAX_OUTPUT_ELEMENTS = 1 << 23  # bound on K*h*w of the zero-shot score maps kept for drawing


@dataclass
class Prediction:
    labels: np.ndarray  # (H, W) int64 class index into names; BACKGROUND (-1) = unlabelled
    maps: torch.Tensor  # (K, h, w) float32: cosine scores (zero-shot) or probabilities (DenseCLIP)
    names: tuple[str, ...]
    map_kind: str
    timing: dict
    info: dict


@dataclass
class Segmentation:
    """A finished request: the prediction, the decoded image and what the JSON / status line report."""

    pred: Prediction
    rgb: np.ndarray  # (H, W, 3) uint8, the image as decoded (labels are at this size)
    image_info: dict  # read_image's facts about the file
    spec: ModelSpec
    opacity: float
    notes: list[str]  # for the person: merged duplicates, downscaling, ignored classes, truncated names
    load_seconds: float
    started: float  # time.perf_counter() when the request began


def run_zeroshot(model, rgb: np.ndarray, names: tuple[str, ...], templates: str) -> Prediction:
    """A ZeroShotSegmenter on one image; "auto" templates = "simple" up to AUTO_TEMPLATE_LIMIT classes."""
    if templates == "auto":
        templates = "simple" if len(names) <= AUTO_TEMPLATE_LIMIT else "single"
    prompts = len(get_templates(templates)) * len(names)
    if prompts > MAX_PROMPTS:
        raise UserError(f"{len(names)} classes x {len(get_templates(templates))} '{templates}' prompts = {prompts:,} "
                        f"texts to encode (the limit is {MAX_PROMPTS:,}); choose the 'single' or 'simple' prompt "
                        "templates (Advanced), or fewer classes.")
    # labels at the image size; score maps only as large as the gallery draws them (fast on CPU)
    r = model.predict(rgb, list(names), templates=templates,
                      max_output_elements=min(MAX_OUTPUT_ELEMENTS, len(names) * GALLERY_SIDE ** 2))
    info = {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.info.items()
            if k in ("model", "dense_mode", "working_size", "templates")}
    info["template_set"] = templates
    return Prediction(r.labels.numpy(), r.scores, tuple(r.class_names), "cosine similarity",
                      {k: round(v, 4) for k, v in r.timing.items()}, info)


def match_classes(model_names: Sequence[str], names: Sequence[str]) -> tuple[list[int], list[str]]:
    """Indices into model_names of the typed names (case-insensitive; first match), and the unknown names."""
    index = {" ".join(n.split()).casefold(): i for i, n in reversed(list(enumerate(model_names)))}
    idx, unknown = [], []
    for n in names:
        i = index.get(n.casefold())
        (unknown.append(n) if i is None else idx.append(i))
    return idx, unknown


def run_denseclip(model, rgb: np.ndarray, names: tuple[str, ...]) -> tuple[Prediction, list[str]]:
    """A DenseCLIP checkpoint predicts its own classes; typed names choose a subset (argmax over those).

    The probabilities of the chosen classes are renormalised to sum to 1 (a softmax over those only).
    """
    notes = []
    model_names = tuple(" ".join(n.split()) for n in model.cfg.class_names)
    if names:
        idx, unknown = match_classes(model_names, names)
        if not idx:
            raise UserError(f"None of the class names is a class of this checkpoint, which predicts a fixed set of "
                            f"{len(model_names)} classes (e.g. {', '.join(model_names[:8])}). Type some of those, "
                            "or leave the box empty to use all of them.")
        if unknown:
            notes.append(f"Not classes of this checkpoint, ignored: {', '.join(repr(u) for u in unknown[:10])}"
                         f"{' ...' if len(unknown) > 10 else ''}. A DenseCLIP checkpoint only predicts its "
                         f"{len(model_names)} training classes.")
    else:
        idx = list(range(len(model_names)))
        notes.append(f"No class names typed: using all {len(model_names)} classes of the checkpoint.")
    h, w = rgb.shape[:2]
    test = model.cfg.test
    scale = min(1.0, test.short_side / min(h, w), test.max_long_side / max(h, w))
    small = rgb
    if scale < 1.0:  # the test pipeline resizes to this anyway: keep (K, H, W) probabilities small
        small = np.asarray(Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                       Image.Resampling.BILINEAR))
    r = predict(model, small)
    probs = r.probs[idx]
    probs = probs / probs.sum(0, keepdim=True).clamp_min(1e-12)  # softmax over the chosen classes only
    labels = probs.argmax(0)
    if labels.shape != (h, w):
        labels = F.interpolate(labels[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
    info = {"model": model.cfg.name, "mode": r.info.get("mode"), "working_size": list(small.shape[:2]),
            "checkpoint_classes": len(model_names)}
    pred = Prediction(labels.numpy(), probs, tuple(model_names[i] for i in idx), "probability",
                      {"total": round(r.seconds, 4)}, info)
    return pred, notes


def load_model(registry: ModelRegistry, spec: ModelSpec) -> torch.nn.Module:
    """registry.get, with a UserError saying what is missing or why the checkpoint does not load."""
    try:
        return registry.get(spec)
    except WeightsUnavailableError as e:
        raise UserError(f"{spec.label} is not available. {weights_help(spec, e)}") from None
    except MemoryError:
        raise
    except Exception as e:  # a broken / incompatible / pickled checkpoint: say which and why
        log.warning("could not load %s:\n%s", spec.label, traceback.format_exc())
        raise UserError(registry.scrub(f"Could not load {spec.label}: {type(e).__name__}: {e}")) from None


def segment(registry: ModelRegistry, image, class_names: str | None, model: str | None = None,
            opacity: float = 0.5, templates: str = "auto", max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS,
            progress: Callable[[float, str], object] | None = None) -> Segmentation:
    """A web request: `image` an uploaded file's path, `class_names` the class box, `model` a label / name.

    Raises UserError (message to show as is) for anything wrong with the request; `progress(fraction,
    description)` is called at each step.
    """
    t0 = time.perf_counter()
    step = progress or (lambda fraction, desc: None)
    notes: list[str] = []
    if image is None or (isinstance(image, str) and not image):
        raise UserError("Upload an image first (or click one of the examples).")
    if templates not in TEMPLATE_CHOICES:
        raise UserError(f"templates must be one of {', '.join(TEMPLATE_CHOICES)}, got {templates!r}")
    if not isinstance(opacity, (int, float)) or not 0.0 <= float(opacity) <= 1.0:
        raise UserError(f"opacity must be a number between 0 and 1, got {opacity!r}")
    spec = registry.resolve(model)
    names, name_notes = parse_class_names(class_names, allow_empty=spec.kind == "denseclip")
    notes += name_notes
    step(0.05, "Reading the image")
    rgb, image_info = read_image(image, max_side, max_pixels)
    if image_info["downscaled"]:
        oh, ow = image_info["original_size"]
        notes.append(f"The image ({ow}x{oh}) was downscaled to {rgb.shape[1]}x{rgb.shape[0]}.")
    step(0.15, f"Loading {spec.label}")
    t_load = time.perf_counter()
    net = load_model(registry, spec)
    t_load = time.perf_counter() - t_load
    step(0.3, "Computing pixel-text scores")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if spec.kind == "zeroshot":
            pred = run_zeroshot(net, rgb, names, templates)
        else:
            pred, more = run_denseclip(net, rgb, names)
            notes += more
    for w in caught:
        if "truncated" in str(w.message) or "exceed" in str(w.message):
            notes.append(str(w.message))
    if len(pred.names) == 1:
        notes.append("Only one class: every pixel gets it. Add more classes (e.g. 'background') to compare.")
    step(0.75, "Drawing")
    return Segmentation(pred, rgb, image_info, spec, float(opacity), notes, t_load, t0)
