"""One request, start to end: check the inputs, load the model, predict (zero-shot or a DenseCLIP checkpoint).

    seg = segment(registry, "photo.jpg", "sky, tree, person", Options(unmatched="threshold"))
    seg.pred.labels (H, W), seg.pred.maps (K, h, w), seg.notes       # UserError: show its message

The first steps (an image is there, it is read within the limits, the model is loaded) are the same for
detection (detection.py): `require_image`, `prepare`.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from denseclip.vocab import get_templates
from denseclip.zeroshot import BACKGROUND, METHODS

from .catalog import PRETRAINED, ModelSpec
from .classes import match_classes, parse_class_names
from .errors import Note, UserError
from .images import MAX_PIXELS, MAX_SIDE, read_image
from .models import ModelRegistry

log = logging.getLogger(__name__)

TEMPLATE_CHOICES = {
    "auto": "auto (7 prompts a class; 1 above 40 classes)",
    "single": "single ('a photo of a {}.')",
    "simple": "simple (7 scene prompts)",
    "imagenet": "imagenet (CLIP's 80 prompts, slow)",
}
UNMATCHED_CHOICES = {
    "closest": "get the closest name",
    "background": "stay unlabelled: add a 'background' class",
    "threshold": "stay unlabelled where the scores are low",
}
BACKGROUND_NAME = "background"
AUTO_TEMPLATE_LIMIT = 40  # "auto" templates: 7 prompts a class up to this many classes, then 1
MAX_PROMPTS = 6000  # class names x templates encoded in one request (CLIP's text tower is slow on CPU)
MAP_SIDE = 160  # score maps are kept about this large (drawn larger: they are smooth)
PAMR_SIDE = 512  # ... with "Refine edges" this large (PAMR refines at the maps' size: their detail shows)
PAMR_STEPS = 10  # "Refine edges": PAMR iterations after the zero-shot maps (NACLIP's setting)
DEFAULT_THRESHOLD = 0.5  # "threshold": a share of this picture's score range (see relative_threshold)
COMPUTE = threading.Lock()  # one prediction at a time: the cores are shared, text caches are not thread-safe
Step = Callable[[float, str], object]


@dataclass(frozen=True)
class Options:
    """What a visitor chooses besides the image and the names."""

    model: str | None = None  # a list label, a checkpoint name, or an allowed Hub repo id
    opacity: float = 0.5
    templates: str = "auto"
    unmatched: str = "closest"  # see UNMATCHED_CHOICES (zero-shot models only)
    threshold: float = DEFAULT_THRESHOLD  # unmatched="threshold": 0 labels every pixel, 1 only the best
    refine_edges: bool = False  # PAMR after a zero-shot model's maps (slower)


@dataclass(frozen=True)
class Limits:
    """What the operator allows per request."""

    max_side: int = MAX_SIDE
    max_pixels: int = MAX_PIXELS


@dataclass
class Prediction:
    labels: np.ndarray  # (H, W) int64 index into names; BACKGROUND (-1) = matches no name
    maps: torch.Tensor  # (K, h, w) float32: cosine similarities (zero-shot) or probabilities (DenseCLIP)
    names: tuple[str, ...]
    unit: str  # "cosine similarity" | "probability"
    timing: dict
    info: dict


@dataclass
class Prepared:
    """A request's checked image and loaded model."""

    spec: ModelSpec
    net: torch.nn.Module
    rgb: np.ndarray  # (H, W, 3) uint8 as decoded
    image_info: dict  # read_image's facts about the upload
    notes: list[Note]
    load_seconds: float


@dataclass
class Segmentation:
    """A finished request: the prediction, the decoded image and what the results report."""

    pred: Prediction
    rgb: np.ndarray  # (H, W, 3) uint8 as decoded (labels are at this size)
    image_info: dict  # read_image's facts about the upload
    spec: ModelSpec
    options: Options
    notes: list[Note] = field(default_factory=list)
    load_seconds: float = 0.0
    started: float = 0.0  # time.perf_counter() when the request began


def check_options(options: Options) -> None:
    for name, value, allowed in (("templates", options.templates, TEMPLATE_CHOICES),
                                 ("unmatched", options.unmatched, UNMATCHED_CHOICES)):
        if not isinstance(value, str) or value not in allowed:
            raise UserError(f"{name} must be one of {', '.join(allowed)}, not {str(value)[:40]!r}.")
    for name, value, lo, hi in (("opacity", options.opacity, 0, 1), ("threshold", options.threshold, 0, 1)):
        check_number(name, value, lo, hi)
    if not isinstance(options.refine_edges, bool):
        raise UserError(f"refine_edges must be true or false, not {options.refine_edges!r}.")


def check_number(name: str, value, lo: float, hi: float) -> None:
    """A visitor's number: a real number from `lo` to `hi` (not a bool, not text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
        raise UserError(f"{name} must be a number from {lo} to {hi}, not {str(value)[:40]!r}.")


def require_image(image) -> None:
    if image is None or (isinstance(image, str) and not image):
        raise UserError("Upload an image first (or click one of the examples).")


def load_model(registry: ModelRegistry, spec: ModelSpec) -> torch.nn.Module:
    """registry.get; a failure is one line in the log (its reason) and a message for the visitor."""
    try:
        return registry.get(spec)
    except (UserError, MemoryError):
        raise
    except Exception as e:
        log.warning("%s", registry.failures.get(spec.backbone) or f"{spec.label}: {type(e).__name__}: {e}")
        if spec.kind in ("zeroshot", "detector"):  # the operator's models: their files are missing
            raise UserError(f"{spec.label} is not available on this server right now. Choose another model "
                            "from the list.") from None
        raise UserError(f"Could not load {spec.label}: it is not a DenseCLIP checkpoint this app can read. "
                        "Choose another model.") from None


def prepare(registry: ModelRegistry, spec: ModelSpec, image, limits: Limits, step: Step,
            verb: str = "Segmented") -> Prepared:
    """Read the upload within `limits` (a note when it is downscaled), then load the model."""
    step(0.05, "Reading the image")
    rgb, image_info = read_image(image, limits.max_side, limits.max_pixels)
    notes = []
    if image_info["downscaled"]:
        oh, ow = image_info["original_size"]
        notes.append(Note(f"{verb} at {rgb.shape[1]}×{rgb.shape[0]} (the upload is {ow}×{oh})."))
    step(0.15, f"Loading {spec.label}")
    t0 = time.perf_counter()
    net = load_model(registry, spec)
    return Prepared(spec, net, rgb, image_info, notes, time.perf_counter() - t0)


def auto_templates(templates: str, count: int) -> str:
    """"auto": the 7 "simple" prompts a class up to AUTO_TEMPLATE_LIMIT classes, then "single"."""
    if templates == "auto":
        return "simple" if count <= AUTO_TEMPLATE_LIMIT else "single"
    return templates


def relative_threshold(labels: torch.Tensor, scores: torch.Tensor, share: float
                       ) -> tuple[torch.Tensor, float]:
    """Unlabel (BACKGROUND) the pixels whose best score is below `share` of the way from this picture's
    lowest best score to its highest (0: every pixel keeps its class; 1: only the best one). A threshold
    in the picture's own range, because cosine similarities differ a lot between models and names.
    labels (H, W); scores (K, h, w), upsampled here. Returns the labels and the cosine threshold."""
    best = scores.amax(0)
    cut = float(best.min() + share * (best.max() - best.min()))
    if best.shape != labels.shape:
        best = F.interpolate(best[None, None], size=labels.shape, mode="bilinear", align_corners=False)[0, 0]
    return torch.where(best < cut, torch.full_like(labels, BACKGROUND), labels), cut


def run_zeroshot(model, spec: ModelSpec, rgb: np.ndarray, names: tuple[str, ...], options: Options
                 ) -> tuple[Prediction, list[Note]]:
    """A zero-shot segmenter on one image, with the entry's method (and PAMR when asked)."""
    notes = []
    templates = auto_templates(options.templates, len(names))
    background = None
    if options.unmatched == "background":
        if BACKGROUND_NAME in (n.casefold() for n in names):
            notes.append(Note(f"'{BACKGROUND_NAME}' is one of your names, so it is labelled like the "
                              "others."))
        else:
            background = BACKGROUND_NAME
    n_prompts = len(get_templates(templates)) * (len(names) + (background is not None))
    if n_prompts > MAX_PROMPTS:
        raise UserError(f"{len(names)} class names with the '{templates}' prompts make {n_prompts:,} texts "
                        f"to encode (the limit is {MAX_PROMPTS:,}): choose the 'single' or 'simple' prompts "
                        "(Advanced), or fewer names.")
    pamr = PAMR_STEPS if options.refine_edges else 0
    if pamr:
        notes.append(Note(f"Edges refined with PAMR ({PAMR_STEPS} steps)."))
    side = PAMR_SIDE if pamr else MAP_SIDE
    method = {"method": spec.method} if spec.method else {}
    r = model.predict(rgb, list(names), templates=templates, background=background, pamr_steps=pamr,
                      max_output_elements=len(names) * side ** 2, **method)
    labels = r.labels
    info = {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.info.items()
            if k in ("model", "pretrained", "method", "working_size", "templates", "background", "pamr_steps",
                     "dtype")}
    info["template_set"] = templates
    if info["method"] in METHODS:
        info["paper"] = METHODS[info["method"]].paper
    if options.unmatched == "threshold":
        labels, info["threshold_score"] = relative_threshold(labels, r.scores, float(options.threshold))
    pred = Prediction(labels.numpy(), r.scores, tuple(r.class_names), "cosine similarity",
                      {k: round(v, 4) for k, v in r.timing.items()}, info)
    return pred, notes


def run_denseclip(model, rgb: np.ndarray, names: tuple[str, ...]) -> tuple[Prediction, list[Note]]:
    """A DenseCLIP checkpoint predicts its own classes; typed names choose a subset (argmax over those),
    whose probabilities are renormalised to sum to 1 (a softmax over those classes only)."""
    from denseclip import predict

    notes = []
    model_names = tuple(" ".join(n.split()) for n in model.cfg.class_names)
    if names:
        idx, unknown = match_classes(model_names, names)
        if not idx:
            raise UserError(f"None of these names is a class of this checkpoint, which knows "
                            f"{len(model_names)} classes (e.g. {', '.join(model_names[:8])}). Type some of "
                            "those, or leave the box empty to use all of them.")
        if unknown:
            listed = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            notes.append(Note(f"Not classes of this checkpoint, left out: {listed}.", loud=True))
    else:
        idx = list(range(len(model_names)))
        notes.append(Note(f"No class names typed: all {len(model_names)} classes of the checkpoint."))
    h, w = rgb.shape[:2]
    test = model.cfg.test
    scale = min(1.0, test.short_side / min(h, w), test.max_long_side / max(h, w))
    small = rgb
    if scale < 1.0:  # the test pipeline resizes to this anyway: keep (K, H, W) probabilities small
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    r = predict(model, small)
    probs = r.probs[idx]
    probs = probs / probs.sum(0, keepdim=True).clamp_min(1e-12)
    labels = probs.argmax(0)
    if labels.shape != (h, w):
        labels = F.interpolate(labels[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
    info = {"model": model.cfg.name, "working_size": list(small.shape[:2]),
            "checkpoint_classes": len(model_names), "pretrained": "checkpoint"}
    return Prediction(labels.numpy(), probs, tuple(model_names[i] for i in idx), "probability",
                      {"total": round(r.seconds, 4)}, info), notes


def segment(registry: ModelRegistry, image, class_names: str | None, options: Options = Options(),
            limits: Limits = Limits(), progress: Step | None = None) -> Segmentation:
    """A visitor's request: `image` an uploaded file's path, `class_names` the class box.

    Raises UserError (a message to show as is); `progress(fraction, description)` is called at each step.
    """
    t0 = time.perf_counter()
    step = progress or (lambda fraction, desc: None)
    require_image(image)
    check_options(options)
    spec = registry.resolve(options.model)
    names, notes = parse_class_names(class_names, allow_empty=spec.kind == "denseclip")
    req = prepare(registry, spec, image, limits, step)
    notes += req.notes
    step(0.3, "Matching pixels with names")
    with COMPUTE, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if spec.kind == "zeroshot":
            pred, more = run_zeroshot(req.net, spec, req.rgb, names, options)
        else:
            pred, more = run_denseclip(req.net, req.rgb, names)
            if options.unmatched != "closest":
                more.append(Note("A DenseCLIP checkpoint labels every pixel with one of its classes.",
                                 loud=True))
            if options.refine_edges:
                more.append(Note("Edge refinement (PAMR) applies to the zero-shot models only."))
    notes += more
    for w in caught:
        if "truncated" in str(w.message):
            notes.append(Note(f"A class name is too long for the text encoder and was cut: {w.message}",
                              loud=True))
    if len(pred.names) == 1 and not (pred.labels < 0).any():
        notes.append(Note("Only one class: every pixel gets it. Add more names, or let unmatched pixels "
                          "stay unlabelled."))
    step(0.75, "Drawing")
    return Segmentation(pred, req.rgb, req.image_info, spec, options, notes, req.load_seconds, t0)


def warm_text(registry: ModelRegistry, class_lists: Sequence[Sequence[str]], chunk: int = 16) -> int:
    """Embed `class_lists` (the preset lists) with every loaded zero-shot model, in the templates "auto"
    gives them, `chunk` names at a time so that requests run in between; returns the names embedded.
    For a background thread at start: the first ADE20K request then finds its text in the cache."""
    done, seen = 0, set()
    for label in registry.listed:
        spec = registry.specs[label]
        real = spec.kind == "zeroshot" and spec.pretrained == PRETRAINED
        if not real or not registry.loaded(label) or spec.backbone in seen:
            continue
        seen.add(spec.backbone)  # one text cache per loaded model, whatever the method
        model = registry.get(spec)
        for names in class_lists:
            templates = auto_templates("auto", len(names))
            for i in range(0, len(names), chunk):
                with COMPUTE:
                    model.encode_text(list(names[i:i + chunk]), templates)
                done += len(names[i:i + chunk])
    return done
