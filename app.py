"""DenseCLIP demo: which of your words is where in a photo (per-class score maps and a segmentation), and
the objects a DenseCLIP detector finds in it.

    python app.py                           # zero-shot CLIP ViT-B/16 (NACLIP; ClearCLIP), RN50, RN101
    python app.py --tiny                    # untrained tiny models, offline UI checks (or DENSECLIP_TINY=1)
    python app.py --checkpoint run/ckpt     # + a DenseCLIP checkpoint: file, folder, Hub repo, authors' .pth
    python app.py --detector det.pth        # + a detector for the Detect tab (or DENSECLIP_DETECTORS=a,b)
    python app.py --hub-allow my-lab/       # visitors may name Hub checkpoints of my-lab (size-capped)

This file is the UI only (layout, events, messages) and the Hugging Face Space's `app_file`; the logic
(uploads, limits, models, predicting, detecting, drawing, files) is the gradio-free package `webapp/`.

What a visitor can and cannot make the server do (the operator decides the rest on the command line):
- Models: one from the list, or a checkpoint name inside DENSECLIP_CHECKPOINT_DIR (--checkpoint-dir);
  Hub repos only if the operator allows them (--hub-allow, DENSECLIP_HUB_ALLOW: repo ids or owners),
  below a size cap (--hub-max-mb) read from the Hub before downloading. Server paths are refused.
  Detectors: only the operator's (--detector), loaded on first use, one in memory at a time.
- Images: uploads up to --max-file-size (30 MB); the header is read first, and images above
  --max-pixels (50 MP; JPEGs are decoded at a reduced size instead) are refused without decoding;
  decoded at most --max-side (1024) pixels on the long side. No server folder is served.
- Class names: at most 512 names of at most 200 characters; repeats are merged.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from webapp import (
    MAX_CLASSES,  # noqa: F401  (part of the app's interface for scripts and tests)
    MAX_GALLERY,
    MAX_PIXELS,
    MAX_SIDE,
    MAX_TEXT_CHARS,
    NO_DETECTOR,
    PRESETS,
    TEMPLATE_CHOICES,
    TINY_DC,  # noqa: F401
    TINY_DETECTORS,  # noqa: F401
    TINY_ZS,  # noqa: F401
    UNMATCHED_CHOICES,
    DetectOptions,
    HubAccess,
    Limits,
    ModelRegistry,
    Options,
    OutputFolders,
    UserError,
    default_specs,
    describe_upload,
    detection,
    detector_specs,
    parse_class_names,  # noqa: F401
    preset_text,
    render,
    render_detections,
    results,
)
from webapp import segment as run_request
from webapp.catalog import load_examples
from webapp.images import save_data_url
from webapp.page import (
    CSS,
    START_JS,
    WAITED_JS,
    banner,
    detection_status,
    legend_html,
    md,
    md_keep_bold,
    status_line,
    toast,
)

log = logging.getLogger("denseclip.app")
HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
MAX_FILE_SIZE = "30mb"  # upload limit (Gradio answers 413 above it)
MAX_ACTIVE = 4  # requests in progress at once (predictions still run one at a time; downloads do not wait)
CUSTOM = "Custom"
SPACE_PORT = 7860
DETECTORS_ENV = "DENSECLIP_DETECTORS"  # the operator's detectors, comma separated (--detector wins)
# event options: quick page updates outside the queue; redraws from a finished result in a small pool
PRIVATE = {"api_visibility": "private", "queue": False}
REDRAW = {"api_visibility": "private", "concurrency_limit": 4, "concurrency_id": "redraw"}
PREDICT = {"concurrency_limit": MAX_ACTIVE, "concurrency_id": "predict"}  # segment and detect share it


def _env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


# ---------------------------------------------------------------------------------------- image input
class ImageInput(gr.Image):
    """gr.Image whose value reaches the app as the uploaded file's path, undecoded.

    gr.Image(type="filepath") opens every upload with PIL first, so a non-image or an oversized file fails
    inside Gradio with an unhelpful message. Here the app reads the header first and decodes within its
    limits. (Gradio writes a type stub, app.pyi, next to this file; it is git-ignored.)
    """

    is_template = True  # use gr.Image's frontend (Gradio looks components up by the base class name)

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # API base64 images: decoded by the app
            return payload.url
        if payload.path is None:
            raise gr.Error("The image did not arrive; upload it again.", print_exception=False)
        return str(payload.path)


def bind_address(host: str | None, port: int | None) -> tuple[str | None, int | None]:
    """On a Hugging Face Space (SPACE_ID set) the app listens on 0.0.0.0:7860 unless told otherwise."""
    if os.environ.get("SPACE_ID"):
        return host or "0.0.0.0", port or SPACE_PORT
    return host, port


# ------------------------------------------------------------------------------------------- handlers
@contextmanager
def visitor_errors(action: str) -> Iterator[None]:
    """A refused request's message as a toast; out of memory and bugs as a plain message (bugs logged)."""
    try:
        yield
    except UserError as e:
        log.info("refused a request: %s", e)
        raise gr.Error(toast(str(e)), duration=None, print_exception=False) from None
    except MemoryError:
        log.warning("out of memory in a request")
        raise gr.Error("The server ran out of memory: try a smaller image or fewer class names.",
                       duration=None, print_exception=False) from None
    except Exception as e:  # a bug: log it, say so, keep serving
        log.exception("%s failed", action)
        raise gr.Error(f"Something went wrong on the server ({type(e).__name__}). It is logged; please "
                       "try again or report it.", duration=None, print_exception=False) from None


def _inline_image(image, folder: Path):
    """An API image sent as a base64 data URL, written to the request's folder; an upload's path as is."""
    if isinstance(image, str) and image.startswith("data:"):
        return save_data_url(image, folder)
    return image


class Handlers:
    """The events that need the server's state: the model lists, the request folders, the limits."""

    def __init__(self, registry: ModelRegistry, detectors: ModelRegistry, limits: Limits):
        self.registry, self.detectors, self.limits = registry, detectors, limits
        self.folders = OutputFolders()

    def segment(self, image, class_names, model=None, opacity=0.5, templates="auto",  # noqa: PLR0913
                unmatched="closest", threshold=0.2, refine_edges=False, progress=gr.Progress()):
        # one parameter per input: these names are the public /segment API; refine_edges is the page's
        # "Refine edges" checkbox through a session state, which the API does not list (API calls: off)
        """Segment `image` into the classes named in `class_names`.

        Args:
            image: the photo (JPEG, PNG, WebP, GIF, BMP or TIFF).
            class_names: names separated by commas, semicolons, tabs or new lines.
            model: a model from the list (or a checkpoint name the server offers).
            opacity: how strongly the class colours cover the photo (0 to 1).
            templates: prompt templates for zero-shot models: auto, single, simple or imagenet.
            unmatched: pixels that match none of the names: "closest" (label them anyway), "background" (a
                'background' class) or "threshold" (unlabelled below `threshold`).
            threshold: cosine similarity below which a pixel stays unlabelled (unmatched="threshold").
        Returns:
            segmentation: PNG of the class colours and names over the photo.
            score_maps: one picture per class (up to 12, largest first), captioned "name · coverage".
            label_map_png: class indices at the upload's size (encoding: see the results JSON).
            results_json: every class's colour, pixels, share and scores; the timing; the notes.
            status: one line of Markdown: time, model, classes, size, largest classes, notes.
        """
        options = Options(model, opacity, templates, unmatched, threshold, refine_edges)
        folder = self.folders.new()
        with visitor_errors("segment"):
            seg = run_request(self.registry, _inline_image(image, folder), class_names, options, self.limits,
                              progress=lambda fraction, desc: progress(fraction, desc=desc))
            out = render(seg, folder)
        for note in seg.notes:
            if note.loud:
                gr.Warning(toast(note.text))
        return (str(out.segmentation), out.gallery, str(out.label_map), str(out.results),
                status_line(seg, out), out.state)

    def detect(self, image, model=None, threshold=detection.DEFAULT_THRESHOLD, progress=gr.Progress()):
        """Find the objects a DenseCLIP detector knows in `image`: boxes with class names and scores (and
        masks, for Mask R-CNN).

        Args:
            image: the photo (JPEG, PNG, WebP, GIF, BMP or TIFF).
            model: a detector from the list.
            threshold: detections scoring less (0 to 1) are left out.
        Returns:
            detections: PNG of the photo with each detection's box, "name score" tag and mask.
            results_json: every detection's class, score, box (x1, y1, x2, y2 in the upload's pixels) and
                mask share; the detector's classes; the timing; the notes.
            status: one line of Markdown: time, detector, detections, size, commonest classes, notes.
        """
        folder = self.folders.new()
        with visitor_errors("detect"):
            det = detection.detect(self.detectors, _inline_image(image, folder),
                                   DetectOptions(model, threshold), self.limits,
                                   progress=lambda fraction, desc: progress(fraction, desc=desc))
            out = render_detections(det, folder)
        return str(out.picture), str(out.results), detection_status(det, out), out.rows

    def check_upload(self, path, verb: str = "segmented"):
        try:
            return md(describe_upload(path, self.limits.max_side, self.limits.max_pixels, verb))
        except UserError as e:
            gr.Warning(toast(str(e)))
            return f"⚠️ {md(str(e))}"

    def on_load(self):
        text = banner(self.registry, self.detectors)
        return (gr.Dropdown(choices=self.registry.choices()), gr.Dropdown(choices=self.detectors.choices()),
                gr.Markdown(text, visible=bool(text)))


def show_details(state):
    names, more = state["names"], len(state["names"]) > MAX_GALLERY
    label = f"Score maps · {MAX_GALLERY} of {len(names)} classes (any other one below)" if more else \
        "Score maps"
    return (legend_html(state), gr.Gallery(label=label), gr.Dropdown(choices=names, value=None),
            "Click the segmentation to read the scores at a point.")


def failed():
    return "The last run did not finish: see the message in the corner."


def recolour(state, opacity):
    if not state:
        return gr.skip()
    try:
        return results.recolour(state, float(opacity))
    except UserError as e:
        raise gr.Error(toast(str(e)), print_exception=False) from None


def read_pixel(state, evt: gr.SelectData):
    if not state or not isinstance(evt.index, (list, tuple)):
        return gr.skip()
    try:
        return md_keep_bold(results.at_pixel(state, int(evt.index[0]), int(evt.index[1])))
    except UserError as e:
        return md(str(e))


def show_score_map(state, name):
    if not state or not name:
        return gr.skip()
    try:
        items, index = results.gallery_with(state, name)
    except UserError as e:
        raise gr.Error(toast(str(e)), print_exception=False) from None
    return gr.Gallery(value=items, selected_index=index)


def fill_preset(preset, text, saved):
    if preset == CUSTOM:
        return saved, saved
    if text not in {preset_text(v) for v in PRESETS.values()}:
        saved = text  # the visitor's own names, back when they pick Custom again
    return preset_text(PRESETS[preset]), saved


def match_preset(text):
    return next((name for name, names in PRESETS.items() if text == preset_text(names)), CUSTOM)


# ------------------------------------------------------------------------------------------------ app
def build_app(tiny: bool | None = None, checkpoints: Sequence[str] = (), checkpoint_dir: str | None = None,
              hub: HubAccess | None = None, limits: Limits = Limits(), detectors: Sequence[str] | None = None,
              preload: bool = True, device: str | None = None) -> gr.Blocks:
    """The Gradio Blocks app (not launched; see `serve`). Defaults come from the environment:
    DENSECLIP_TINY=1, DENSECLIP_CHECKPOINT_DIR, DENSECLIP_HUB_ALLOW, DENSECLIP_HUB_MAX_MB,
    DENSECLIP_DETECTORS (comma separated)."""
    tiny = _env_flag("DENSECLIP_TINY") if tiny is None else tiny
    if checkpoint_dir is None:
        checkpoint_dir = os.environ.get("DENSECLIP_CHECKPOINT_DIR")
    registry = ModelRegistry(default_specs(tiny, checkpoints), checkpoint_dir, hub or HubAccess.from_env(),
                             limits.max_loaded, device)
    found = ModelRegistry(detector_specs(tiny, _env_list(DETECTORS_ENV) if detectors is None else detectors),
                          max_loaded=1, device=device)  # detectors: loaded on first use, one at a time
    if not found.specs:
        log.info("No detector configured: the Detect tab tells visitors this server has none. To offer one, "
                 "start with --detector PATH (repeatable) or set %s.", DETECTORS_ENV)
    if preload:  # the default model now (the page says if it failed); the others when served
        try:
            registry.get(registry.default)
        except Exception:
            log.warning("%s", registry.failures.get(registry.default.label, "default model failed to load"))
    handlers = Handlers(registry, found, limits)
    with gr.Blocks(title="DenseCLIP: which word is where", delete_cache=(1800, 3600)) as demo:
        top = _header(registry, found)
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Segment", id="segment", elem_id="segment-tab"):
                seg = _segment_tab(registry)
            with gr.Tab("Detect objects", id="detect", elem_id="detect-tab"):
                det = _detect_tab(found)
        _wire_segment(seg, handlers)
        _wire_detect(det, handlers)
        demo.load(handlers.on_load, None, [seg.model, det.model, top], **PRIVATE)
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.registry, demo.detectors = registry, found  # for tests and scripts
    return demo


def _wire_segment(ui: SimpleNamespace, handlers: Handlers) -> None:
    """The Segment tab's events: the run (the public /segment endpoint), then what a result offers."""
    state, saved_text, refine = gr.State(None), gr.State(""), gr.State(False)
    inputs = [ui.image, ui.classes, ui.model, ui.opacity, ui.templates, ui.unmatched, ui.threshold, refine]
    outputs = [ui.overlay, ui.gallery, ui.label_map, ui.results, ui.status, state]
    done = ui.run.click(handlers.segment, inputs, outputs, api_name="segment", js=START_JS, **PREDICT)
    shown = done.success(show_details, state, [ui.coverage, ui.gallery, ui.picker, ui.readout], **PRIVATE)
    shown.success(None, ui.status, ui.status, js=WAITED_JS, api_visibility="private")
    done.failure(failed, None, ui.status, **PRIVATE)
    ui.opacity.release(recolour, [state, ui.opacity], ui.overlay, show_progress="hidden", **REDRAW)
    ui.picker.input(show_score_map, [state, ui.picker], ui.gallery, **REDRAW)
    ui.overlay.select(read_pixel, state, ui.readout, **PRIVATE)
    ui.preset.input(fill_preset, [ui.preset, ui.classes, saved_text], [ui.classes, saved_text], **PRIVATE)
    ui.classes.change(match_preset, ui.classes, ui.preset, **PRIVATE)
    ui.image.change(handlers.check_upload, ui.image, ui.image_note, show_progress="hidden", **REDRAW)
    ui.unmatched.change(lambda u: gr.Slider(visible=u == "threshold"), ui.unmatched, ui.threshold, **PRIVATE)
    ui.refine.change(lambda on: on, ui.refine, refine, **PRIVATE)


def _wire_detect(ui: SimpleNamespace, handlers: Handlers) -> None:
    """The Detect tab's events: the run (the public /detect endpoint), then the table of detections."""
    rows = gr.State([])
    outputs = [ui.picture, ui.results, ui.status, rows]
    done = ui.run.click(handlers.detect, [ui.image, ui.model, ui.threshold], outputs, api_name="detect",
                        js=START_JS, **PREDICT)
    shown = done.success(lambda r: r, rows, ui.table, **PRIVATE)
    shown.success(None, ui.status, ui.status, js=WAITED_JS, api_visibility="private")
    done.failure(failed, None, ui.status, **PRIVATE)
    check = functools.partial(handlers.check_upload, verb="detected")
    ui.image.change(check, ui.image, ui.image_note, show_progress="hidden", **REDRAW)


# --------------------------------------------------------------------------------------------- layout
def _header(registry: ModelRegistry, detectors: ModelRegistry) -> gr.Markdown:
    """The title and the operator banner (returned: the page refreshes it on load)."""
    gr.Markdown("# DenseCLIP · which word is where\n"
                "Type what to look for: CLIP's dense image embeddings are matched with each name's "
                "text embedding, giving one score map per name and a segmentation, without training for "
                "your names ([DenseCLIP, Rao et al., CVPR 2022](https://arxiv.org/abs/2112.01518)).",
                elem_id="title")
    text = banner(registry, detectors)
    return gr.Markdown(text, elem_id="model-status", visible=bool(text))


def _segment_tab(registry: ModelRegistry) -> SimpleNamespace:
    """The Segment tab's components (inputs on the left, the answer on the right), by short name."""
    ui = SimpleNamespace()
    custom = registry.checkpoint_dir is not None or registry.hub.enabled
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=300):
            ui.image = ImageInput(label="Image", type="filepath", sources=["upload", "webcam", "clipboard"],
                                  elem_id="image-input", height=340)
            ui.image_note = gr.Markdown("", elem_id="image-note")
            ui.preset = gr.Radio([CUSTOM, *PRESETS], value=CUSTOM, label="Class list", elem_id="preset-input")
            ui.classes = gr.Textbox(label="Class names", lines=3, max_lines=8, max_length=MAX_TEXT_CHARS,
                                    placeholder="sky, tree, road, person, car", elem_id="classes-input",
                                    info="Separate names with commas, semicolons, tabs or new lines.")
            ui.model = gr.Dropdown(
                registry.choices(), value=registry.default.label, label="Model", elem_id="model-input",
                allow_custom_value=custom,
                info="A trained DenseCLIP checkpoint knows its own classes: names pick some (empty = all)."
                     + (" You may also type a checkpoint name this server offers." if custom else ""))
            ui.unmatched = gr.Radio([(v, k) for k, v in UNMATCHED_CHOICES.items()], value="closest",
                                    label="Pixels that match none of the names", elem_id="unmatched-input")
            ui.threshold = gr.Slider(-0.2, 0.6, value=0.2, step=0.01,
                                     label="Score threshold (cosine similarity)",
                                     info="Read a good value off the score maps' colour bars.",
                                     elem_id="threshold-input", visible=False)
            ui.opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Colour opacity",
                                   elem_id="opacity-input")
            with gr.Accordion("Advanced", open=False):
                ui.templates = gr.Dropdown([(v, k) for k, v in TEMPLATE_CHOICES.items()], value="auto",
                                           label="Prompt templates (zero-shot)", elem_id="templates-input")
                ui.refine = gr.Checkbox(False, label="Refine edges (PAMR, slower)", elem_id="refine-input",
                                        info="Zero-shot models: the maps follow the photo's edges.")
            ui.run = gr.Button("Segment", variant="primary", elem_id="run-button")
        with gr.Column(scale=7, min_width=300):
            ui.overlay = gr.Image(label="Segmentation", type="filepath", format="png", interactive=False,
                                  elem_id="segmentation-output", buttons=["download", "fullscreen"])
            ui.readout = gr.Markdown("", elem_id="pixel-readout")
            ui.status = gr.Markdown(label="Status", elem_id="time-output")
            ui.coverage = gr.HTML(label="Pixels per class", elem_id="coverage-output")
            ui.gallery = gr.Gallery(label="Score maps", elem_id="scoremaps-output", columns=2, height="auto",
                                    object_fit="contain", format="png")
            ui.picker = gr.Dropdown([], label="Score map of any class", elem_id="scoremap-class",
                                    info="After a run: any class's map, also one not shown above.")
            with gr.Row():
                ui.label_map = gr.File(label="Label map (PNG)", elem_id="labelmap-output")
                ui.results = gr.File(label="Results (JSON)", elem_id="json-output")
    examples = [[e["path"], e["classes"]] for e in load_examples(EXAMPLES_DIR)]
    if examples:  # below both columns: on a phone the answer comes right after the Segment button
        gr.Examples(examples, inputs=[ui.image, ui.classes], label="Examples (public-domain photos)",
                    examples_per_page=5)
    return ui


def _detect_tab(detectors: ModelRegistry) -> SimpleNamespace:
    """The Detect tab's components; without a detector, one line saying so (the events still exist)."""
    ui = SimpleNamespace()
    offered = bool(detectors.specs)
    gr.Markdown("A DenseCLIP detector finds the objects of the classes it was trained on (COCO's 80 for "
                "the authors' detectors): a box, a class name and a score each, and a mask for Mask R-CNN.",
                elem_id="detect-intro", visible=offered)
    gr.Markdown(f"ℹ️ {NO_DETECTOR}", elem_id="detect-none", visible=not offered)
    with gr.Row(equal_height=False, visible=offered):
        with gr.Column(scale=5, min_width=300):
            ui.image = ImageInput(label="Image", type="filepath", sources=["upload", "webcam", "clipboard"],
                                  elem_id="detect-image-input", height=340)
            ui.image_note = gr.Markdown("", elem_id="detect-image-note")
            default = detectors.default.label if offered else None
            ui.model = gr.Dropdown(detectors.choices(), value=default, label="Detector",
                                   elem_id="detector-input")
            ui.threshold = gr.Slider(0.0, 1.0, value=detection.DEFAULT_THRESHOLD, step=0.05,
                                     label="Score threshold", elem_id="detect-threshold-input",
                                     info="Detections scoring less are left out.")
            ui.run = gr.Button("Detect", variant="primary", elem_id="detect-button")
        with gr.Column(scale=7, min_width=300):
            ui.picture = gr.Image(label="Detections", type="filepath", format="png", interactive=False,
                                  elem_id="detections-output", buttons=["download", "fullscreen"])
            ui.status = gr.Markdown(label="Status", elem_id="detect-status")
            ui.table = gr.Dataframe(headers=detection.TABLE_HEADERS, label="Detections, best first",
                                    interactive=False, elem_id="detections-table", wrap=True)
            ui.results = gr.File(label="Results (JSON)", elem_id="detect-json-output")
    examples = [[e["path"]] for e in load_examples(EXAMPLES_DIR)]
    if examples and offered:
        gr.Examples(examples, inputs=[ui.image], label="Examples (public-domain photos)", examples_per_page=5)
    return ui


def launch_options(max_file_size: str | int = MAX_FILE_SIZE) -> dict:
    """Keyword arguments of demo.launch() that matter for safety and looks (tests use them too)."""
    theme = gr.themes.Soft(primary_hue="indigo", secondary_hue="green")
    return {"max_file_size": max_file_size, "allowed_paths": [], "show_error": True, "theme": theme,
            "css": CSS, "footer_links": ["api", "gradio"], "ssr_mode": False}


def serve(demo: gr.Blocks, host: str | None = None, port: int | None = None,
          prevent_thread_lock: bool = False, max_file_size: str | int = MAX_FILE_SIZE,
          check_models: bool = True, **kwargs):
    """demo.launch with launch_options(); host/port None = bind_address's choice, else Gradio's defaults.

    check_models: try every listed segmentation model in a background thread, so that those that cannot
    load are marked unavailable before anyone picks them (detectors load on first use).
    """
    if check_models:
        check = threading.Thread(target=demo.registry.check, name="model-check", daemon=True)
        check.start()
        atexit.register(check.join, 60)  # not killed inside torch at exit (which aborts the process)
    host, port = bind_address(host, port)
    options = {**launch_options(max_file_size), **kwargs}
    return demo.launch(server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock,
                       **options)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=None,
                   help="address to listen on (default GRADIO_SERVER_NAME or 127.0.0.1; 0.0.0.0 on a Space)")
    p.add_argument("--port", type=int, default=None, help="port (default GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="PATH_OR_REPO",
                   help="a DenseCLIP checkpoint to offer (our .safetensors / folder, a Hub repo id, the "
                        "authors' .pth); repeatable; the first is the default model")
    p.add_argument("--checkpoint-dir", default=None,
                   help="folder whose checkpoints visitors may pick by name (DENSECLIP_CHECKPOINT_DIR)")
    p.add_argument("--detector", action="append", default=None, metavar="PATH_OR_REPO",
                   help="a DenseCLIP detector for the Detect tab (the authors' mmdetection .pth, our "
                        f"saved folder / file, a Hub repo id); repeatable; default {DETECTORS_ENV} (comma "
                        "separated)")
    p.add_argument("--tiny", action="store_true", default=None,
                   help="untrained tiny models for offline UI checks (or DENSECLIP_TINY=1)")
    p.add_argument("--hub-allow", default=None, metavar="LIST",
                   help="Hub repos ('user/repo') or owners ('user/') visitors may name, comma separated "
                        "(default DENSECLIP_HUB_ALLOW; none: visitors cannot load Hub checkpoints)")
    p.add_argument("--hub-max-mb", type=float, default=None,
                   help="largest Hub checkpoint visitors may load, in MB (DENSECLIP_HUB_MAX_MB, 2000)")
    p.add_argument("--max-side", type=int, default=MAX_SIDE, help="long side images are decoded to")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="largest non-JPEG image, in pixels")
    p.add_argument("--max-file-size", default=MAX_FILE_SIZE, help="upload limit, e.g. 30mb")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    env = HubAccess.from_env()
    hub = HubAccess.parse(args.hub_allow, args.hub_max_mb) if args.hub_allow is not None else \
        HubAccess(env.allow, int(args.hub_max_mb * 1e6)) if args.hub_max_mb else env
    demo = build_app(tiny=args.tiny, checkpoints=args.checkpoint, checkpoint_dir=args.checkpoint_dir,
                     hub=hub, limits=Limits(args.max_side, args.max_pixels), detectors=args.detector)
    serve(demo, args.host, args.port, max_file_size=args.max_file_size)


if __name__ == "__main__":
    main()
