"""The Detect tab's logic: one upload through a DenseCLIP detector (boxes with class names and scores;
masks for Mask R-CNN), drawn and written to the request's own folder.

    detectors = ModelRegistry(detector_specs(tiny=True), max_loaded=1)
    det = detect(detectors, "photo.jpg", DetectOptions(threshold=0.3))   # UserError: show its message
    out = render_detections(det, OutputFolders().new())     # out.picture, out.results (JSON), out.rows

Visitors pick from the operator's detectors only (`--detector`); uploads go through the same header
checks, bounded decoding and model loading as segmentation (pipeline.prepare), and predictions through
the same lock (pipeline.COMPUTE). A server without a detector says so in the visitor's terms
(NO_DETECTOR); what the operator can do goes to the log.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from denseclip import viz
from denseclip.checkpoints import write_json

from .catalog import ModelSpec
from .drawing import draw_detections, hex_color
from .errors import Note, UserError
from .models import ModelRegistry
from .outputs import JPEG, file_stem
from .pipeline import COMPUTE, Limits, check_number, prepare, require_image

if TYPE_CHECKING:
    from denseclip.detection import DetectionResult

NO_DETECTOR = "This server offers no object detector. The Segment tab finds the things you name in a photo."
DEFAULT_THRESHOLD = 0.3
TABLE_HEADERS = ["#", "class", "score", "box x1, y1, x2, y2", "mask %"]  # box: the upload's pixels


@dataclass(frozen=True)
class DetectOptions:
    """What a visitor chooses besides the image."""

    model: str | None = None  # a detector's label (None: the first one)
    threshold: float = DEFAULT_THRESHOLD  # detections scoring less are not shown


@dataclass
class Detection:
    """A finished request: the detector's result on the decoded image, and what the results report."""

    result: DetectionResult  # boxes / masks at the decoded image's size
    rgb: np.ndarray  # (H, W, 3) uint8 as decoded
    image_info: dict  # read_image's facts about the upload
    spec: ModelSpec
    options: DetectOptions
    notes: list[Note] = field(default_factory=list)
    timing: dict = field(default_factory=dict)  # seconds: model_load, detect
    started: float = 0.0  # time.perf_counter() when the request began


@dataclass
class RenderedDetections:
    folder: Path
    picture: Path  # the photo with boxes, tags and masks
    results: Path  # JSON: every detection (boxes in the upload's pixels), the timing, the notes
    record: dict  # the JSON's content
    rows: list[list]  # the results table (TABLE_HEADERS)


def detect(registry: ModelRegistry, image, options: DetectOptions = DetectOptions(),
           limits: Limits = Limits(), progress: Callable[[float, str], object] | None = None) -> Detection:
    """A visitor's request: `image` an uploaded file's path. Raises UserError (a message to show as is)."""
    import denseclip

    t0 = time.perf_counter()
    step = progress or (lambda fraction, desc: None)
    if not registry.specs:
        raise UserError(NO_DETECTOR)
    require_image(image)
    check_number("threshold", options.threshold, 0, 1)
    spec = registry.resolve(options.model)
    req = prepare(registry, spec, image, limits, step, verb="Detected")
    notes = req.notes + ([Note("The results' boxes are in the upload's pixels.")]
                         if req.image_info["downscaled"] else [])
    step(0.3, "Finding objects")
    with COMPUTE:
        t1 = time.perf_counter()
        result = denseclip.detect(req.net, req.rgb, score_threshold=float(options.threshold))
        timing = {"model_load": round(req.load_seconds, 4), "detect": round(time.perf_counter() - t1, 4)}
    if not len(result):
        notes.append(Note(f"Nothing scored {options.threshold:.2f} or more: lower the score threshold to see "
                          "less certain detections."))
    step(0.85, "Drawing")
    return Detection(result, req.rgb, req.image_info, spec, options, notes, timing, t0)


def render_detections(det: Detection, folder: Path) -> RenderedDetections:
    """Draw the detections and write the picture and the results JSON into `folder` (one per request)."""
    r = det.result
    boxes, scores, labels = r.boxes.numpy(), r.scores.numpy(), r.labels.numpy()
    masks = None if r.masks is None else r.masks.numpy()
    palette = viz.distinct_palette(len(r.class_names))  # the detector's classes: one colour each
    names = r.names
    captions = [f"{name} {score:.2f}" for name, score in zip(names, scores)]
    stem = file_stem(det.image_info["name"])
    picture = folder / f"{stem}_detections.jpg"
    draw_detections(det.rgb, boxes, labels, captions, palette, masks).save(picture, **JPEG)

    h, w = det.rgb.shape[:2]
    oh, ow = det.image_info["original_size"]
    scale = np.array([ow / w, oh / h, ow / w, oh / h])
    mask_share = [None] * len(r) if masks is None else [float(m.mean()) for m in masks]
    detections = [{"index": i, "name": names[i], "class_index": int(labels[i]),
                   "score": round(float(scores[i]), 4),
                   "box": [round(float(v), 1) for v in boxes[i] * scale],
                   "color": hex_color(palette[labels[i]]),
                   **({} if masks is None else {"mask_fraction": round(mask_share[i], 6)})}
                  for i in range(len(r))]
    record = {
        "model": det.spec.label, "pretrained": det.spec.pretrained, "image": det.image_info,
        "threshold": det.options.threshold, "seconds": round(time.perf_counter() - det.started, 3),
        "timing": det.timing,
        "box_format": "x1, y1, x2, y2 in pixels of the uploaded image",
        "masks": masks is not None, "detected_at": [h, w], "classes": list(r.class_names),
        "detections": detections, "notes": [n.text for n in det.notes],
    }
    results = folder / f"{stem}_detections.json"
    write_json(results, record)
    rows = [[i + 1, d["name"], f"{d['score']:.2f}", ", ".join(f"{v:.0f}" for v in d["box"]),
             "–" if share is None else f"{share * 100:.1f}"]
            for i, (d, share) in enumerate(zip(detections, mask_share))]
    return RenderedDetections(folder, picture, results, record, rows)


def counts_by_class(record: dict, top: int = 3) -> list[tuple[str, int]]:
    """The classes detected most often, most first: [(name, count), ...]."""
    return Counter(d["name"] for d in record["detections"]).most_common(top)
