"""DenseCLIP demo: find things in a photo by naming them (per-class score maps and a segmentation), and
the objects a DenseCLIP detector finds in it.

    python app.py                           # zero-shot CLIP ViT-B/16 (NACLIP; ClearCLIP), RN50, RN101
    python app.py --tiny                    # + tiny untrained models, for interface checks offline
    python app.py --checkpoint run/ckpt     # + a DenseCLIP checkpoint: file, folder, Hub repo, authors' .pth
    python app.py --detector det.pth        # + a detector for the Detect tab
    python app.py --help                    # every option, each with its environment variable

Without CLIP weights on the machine the app serves the toy micro-CLIP of denseclip.toy with scenes of its
world; the CLIP models join as soon as their weights are there. This file is the UI only (layout, events)
and the Hugging Face Space's `app_file`; the logic (configuration, uploads, limits, models, requests,
drawing, files, what visitors read) is the gradio-free package `webapp/`.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from webapp import AppConfig, UserError, detection, examples, page, results
from webapp.classes import CUSTOM, MAX_TEXT_CHARS, PRESETS, preset_of, switch_preset
from webapp.detection import DetectOptions, render_detections
from webapp.images import describe_upload, save_data_url
from webapp.likeness import similar_regions
from webapp.outputs import render
from webapp.pipeline import DEFAULT_THRESHOLD, TEMPLATE_CHOICES, UNMATCHED_CHOICES, Options, segment
from webapp.serving import Service, release_memory

log = logging.getLogger("denseclip.app")
HERE = Path(__file__).resolve().parent
MAX_ACTIVE = 4  # requests in progress at once (predictions still run one at a time; downloads do not wait)
# event options: quick page updates outside the queue; redraws from a finished result in a small pool
PRIVATE = {"api_visibility": "private", "queue": False}
REDRAW = {"api_visibility": "private", "concurrency_limit": 4, "concurrency_id": "redraw"}


# ------------------------------------------------------------------------------------- input components
# The API's values reach the handlers as sent: the app checks them and answers a bad one with a message
# (one log line), where Gradio's own checks would print a traceback. (Gradio writes a type stub, app.pyi,
# next to this file for such components; it is git-ignored.)
class ImageInput(gr.Image):
    """gr.Image whose value reaches the app as the uploaded file's path, undecoded (the app reads the
    header first and decodes within its limits; gr.Image would open every upload with PIL first)."""

    is_template = True  # use gr.Image's frontend (Gradio looks components up by the base class name)

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # API base64 images: decoded by the app
            return payload.url
        if payload.path is None:
            raise gr.Error("The image did not arrive; upload it again.", print_exception=False)
        return str(payload.path)


class ChoiceInput(gr.Dropdown):
    is_template = True

    def preprocess(self, payload):
        return payload


class OptionInput(gr.Radio):
    is_template = True

    def preprocess(self, payload):
        return payload


class NumberInput(gr.Slider):
    is_template = True

    def preprocess(self, payload):
        return payload


# ------------------------------------------------------------------------------------------- handlers
@contextmanager
def visitor_errors(action: str) -> Iterator[None]:
    """A refused request's message as a toast (one log line); out of memory and bugs as a plain message
    (bugs logged with their traceback)."""
    try:
        yield
    except UserError as e:
        log.info("refused a request: %s", e)
        raise gr.Error(page.toast(str(e)), duration=None, print_exception=False, title="Not done") from None
    except MemoryError:
        log.warning("out of memory in a request")
        raise gr.Error("The server ran out of memory: try a smaller image or fewer class names.",
                       duration=None, print_exception=False) from None
    except Exception as e:  # a bug: log it, say so, keep serving
        log.exception("%s failed", action)
        raise gr.Error(f"Something went wrong on the server ({type(e).__name__}). It is logged; please "
                       "try again or report it.", duration=None, print_exception=False) from None


class Handlers:
    """The events that need the server's state (webapp.serving.Service)."""

    def __init__(self, service: Service):
        self.service = service
        self.registry, self.detectors, self.limits = service.registry, service.detectors, service.limits
        self.example_sets: list[bool] = []  # which Examples the page has: the toy world's (True), photos

    @staticmethod
    def _image(image, folder: Path):
        """An API image sent as a base64 data URL, written to the request's folder; an upload's path as is."""
        if isinstance(image, str) and image.startswith("data:"):
            return save_data_url(image, folder)
        return image

    def segment(self, image, class_names, model=None, opacity=0.5, templates="auto",  # noqa: PLR0913
                unmatched="closest", threshold=DEFAULT_THRESHOLD, refine_edges=False, progress=gr.Progress()):
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
                'background' class) or "threshold" (unlabelled where the scores are low).
            threshold: unmatched="threshold": where in this picture's range of best scores the cut lies
                (0 labels every pixel, 1 only the best-matching spot).
        Returns:
            segmentation: JPEG of the class colours and names over the photo.
            score_maps: the first score maps (largest classes first), captioned "name · share of pixels".
            label_map_png: class indices at the upload's size (encoding: see the results JSON).
            results_json: every class's colour, pixels, share and scores; the timing; the notes.
            status: one line of Markdown: time, model, classes, size, largest classes, notes.
        """
        options = Options(model, opacity, templates, unmatched, threshold, refine_edges)
        folder = self.service.folders.new()
        with visitor_errors("segment"):
            seg = segment(self.registry, self._image(image, folder), class_names, options, self.limits,
                              progress=lambda fraction, desc: progress(fraction, desc=desc))
            out = render(seg, folder)
        self.service.folders.account(folder)
        for note in seg.notes:
            if note.loud:
                gr.Warning(page.toast(note.text))
        answer = (str(out.segmentation), out.gallery, str(out.label_map), str(out.results),
                  page.status_line(seg, out), out.state)
        del seg, out
        release_memory()
        return answer

    def detect(self, image, model=None, threshold=detection.DEFAULT_THRESHOLD, progress=gr.Progress()):
        """Find the objects a DenseCLIP detector knows in `image`: boxes with class names and scores (and
        masks, for Mask R-CNN).

        Args:
            image: the photo (JPEG, PNG, WebP, GIF, BMP or TIFF).
            model: a detector from the list.
            threshold: detections scoring less (0 to 1) are left out.
        Returns:
            detections: JPEG of the photo with each detection's box, "name score" tag and mask.
            results_json: every detection's class, score, box (x1, y1, x2, y2 in the upload's pixels) and
                mask share; the detector's classes; the timing; the notes.
            status: one line of Markdown: time, detector, detections, size, commonest classes, notes.
        """
        folder = self.service.folders.new()
        with visitor_errors("detect"):
            det = detection.detect(self.detectors, self._image(image, folder),
                                   DetectOptions(model, threshold), self.limits,
                                   progress=lambda fraction, desc: progress(fraction, desc=desc))
            out = render_detections(det, folder)
        self.service.folders.account(folder)
        answer = str(out.picture), str(out.results), page.detection_status(det, out), out.rows
        del det, out
        release_memory()
        return answer

    def check_upload(self, path, verb: str = "segmented"):
        try:
            return page.md(describe_upload(path, self.limits.max_side, self.limits.max_pixels, verb))
        except UserError as e:
            gr.Warning(page.toast(str(e)))
            return f"⚠️ {page.md(str(e))}"

    def like_this(self, state, evt: gr.SelectData):
        """Find more like this: the regions whose dense embeddings are close to the clicked point's."""
        if not state or not isinstance(evt.index, (list, tuple)):
            return gr.skip()
        if self.registry.resolve(state["model"]).kind != "zeroshot":  # a trained checkpoint: scores only
            return gr.Image(visible=False)
        with visitor_errors("find more like this"):
            path, text = similar_regions(self.registry, state, int(evt.index[0]), int(evt.index[1]))
        return gr.Image(value=path, label=f"More like this: {text}", visible=True)

    def on_load(self):
        """The page as it opens: the models ready now, the default one and its hint, its examples (the toy
        world's while the offline model is the default)."""
        default, first = self.registry.default, self.detectors.default
        model = gr.Dropdown(choices=self.registry.choices(), value=getattr(default, "label", None),
                            info=page.model_hint(default))
        detector = gr.Dropdown(choices=self.detectors.choices(), value=getattr(first, "label", None))
        toy = self.service.toy_default
        return model, page.models_line(self.registry), detector, *(
            gr.Dataset(visible=is_toy == toy) for is_toy in self.example_sets)

    def hint(self, label):
        try:
            return gr.Dropdown(info=page.model_hint(self.registry.resolve(label)))
        except UserError:
            return gr.skip()


def show_details(state):
    """What a new result shows besides the run's outputs (and the last result's similar regions hidden)."""
    return (page.legend_html(state), gr.Gallery(label=page.gallery_label(state)),
            gr.Dropdown(choices=state["names"], value=None), page.READ_A_POINT, gr.Image(None, visible=False))


def recolour(state, opacity):
    if not state:
        return gr.skip()
    with visitor_errors("recolour"):
        return results.recolour(state, float(opacity))


def read_pixel(state, evt: gr.SelectData):
    if not state or not isinstance(evt.index, (list, tuple)):
        return gr.skip()
    try:
        return page.md_keep_bold(results.at_pixel(state, int(evt.index[0]), int(evt.index[1])))
    except UserError as e:
        return page.md(str(e))


def show_score_map(state, name):
    if not state or not name:
        return gr.skip()
    with visitor_errors("score map"):
        items, index = results.gallery_with(state, name)
    return gr.Gallery(value=items, selected_index=index)


# ------------------------------------------------------------------------------------------------ app
def build_app(config: AppConfig = AppConfig()) -> gr.Blocks:
    """The Gradio Blocks app for `config` (not launched; see `serve`). Results are written where Gradio
    serves files from, so they are not copied."""
    service = Service.create(config, gr.utils.get_upload_folder())
    handlers = Handlers(service)
    title = "DenseCLIP: find things in a photo by naming them"
    with gr.Blocks(title=title, delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# Find things in a photo by naming them\nType what to look for: CLIP matches every "
                    "pixel with each name and colours the photo by the best match "
                    "([DenseCLIP](https://arxiv.org/abs/2112.01518)).", elem_id="title")
        ready = gr.Markdown(page.models_line(service.registry), elem_id="model-status")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Segment", id="segment", elem_id="segment-tab"):
                seg = _segment_tab(service)
            offered = bool(service.detectors.specs)
            with gr.Tab("Detect objects", id="detect", elem_id="detect-tab", visible=offered):
                det = _detect_tab(service)
        _wire_segment(seg, handlers)
        _wire_detect(det, handlers)
        handlers.example_sets = list(seg.examples)
        datasets = [e.dataset for e in seg.examples.values()]
        demo.load(handlers.on_load, None, [seg.model, ready, det.model, *datasets], **PRIVATE)
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.service, demo.config = service, config
    demo.registry, demo.detectors = service.registry, service.detectors  # for tests and scripts
    return demo

def _run_events(trigger, handlers: Handlers, ui: SimpleNamespace, api: bool):
    """A run (the Segment button: the public /segment endpoint; an example click: private) and what the
    result shows next. A refused run leaves the last result as it was: only the status says so."""
    state, refine = ui.state, ui.refine_state
    inputs = [ui.image, ui.classes, ui.model, ui.opacity, ui.templates, ui.unmatched, ui.threshold, refine]
    outputs = [ui.overlay, ui.gallery, ui.label_map, ui.results, ui.status, state]
    options = {"api_name": "segment"} if api else {"api_visibility": "private"}
    done = trigger(handlers.segment, inputs, outputs, js=page.START_JS, show_progress_on=[ui.status],
                   concurrency_limit=MAX_ACTIVE, concurrency_id="predict", **options)
    details = [ui.coverage, ui.gallery, ui.picker, ui.readout, ui.like]
    shown = done.success(show_details, state, details, **PRIVATE)
    shown.success(None, ui.status, ui.status, js=page.WAITED_JS, api_visibility="private").then(
        None, js=page.SHOW_ANSWER_JS, api_visibility="private")
    done.failure(lambda: page.FAILED, None, ui.status, **PRIVATE)


def _wire_segment(ui: SimpleNamespace, handlers: Handlers) -> None:
    """The Segment tab's events: the run (the public /segment endpoint), then what a result offers."""
    # a result is reopened from its files, which live an hour at most: so does its state
    ui.state, saved_text, ui.refine_state = gr.State(None, time_to_live=3600), gr.State(""), gr.State(False)
    _run_events(ui.run.click, handlers, ui, api=True)
    for clickable in ui.examples.values():
        _run_events(clickable.load_input_event.then, handlers, ui, api=False)
    ui.opacity.release(recolour, [ui.state, ui.opacity], ui.overlay, show_progress="hidden", **REDRAW)
    ui.picker.input(show_score_map, [ui.state, ui.picker], ui.gallery, **REDRAW)
    ui.overlay.select(read_pixel, ui.state, ui.readout, **PRIVATE)
    ui.overlay.select(handlers.like_this, ui.state, ui.like, show_progress="minimal", **REDRAW)
    ui.preset.input(switch_preset, [ui.preset, ui.classes, saved_text], [ui.classes, saved_text], **PRIVATE)
    ui.classes.change(preset_of, ui.classes, ui.preset, **PRIVATE)
    ui.image.change(handlers.check_upload, ui.image, ui.image_note, show_progress="hidden", **REDRAW)
    ui.model.input(handlers.hint, ui.model, ui.model, **PRIVATE)
    ui.unmatched.change(lambda u: gr.Slider(visible=u == "threshold"), ui.unmatched, ui.threshold, **PRIVATE)
    ui.refine.change(lambda on: on, ui.refine, ui.refine_state, **PRIVATE)


def _wire_detect(ui: SimpleNamespace, handlers: Handlers) -> None:
    """The Detect tab's events: the run (the public /detect endpoint), then the table of detections."""
    rows = gr.State([])
    outputs = [ui.picture, ui.results, ui.status, rows]
    done = ui.run.click(handlers.detect, [ui.image, ui.model, ui.threshold], outputs, api_name="detect",
                        js=page.START_JS, show_progress_on=[ui.status], concurrency_limit=MAX_ACTIVE,
                        concurrency_id="predict")
    shown = done.success(lambda r: r, rows, ui.table, **PRIVATE)
    shown.success(None, ui.status, ui.status, js=page.WAITED_JS, api_visibility="private")
    done.failure(lambda: page.FAILED, None, ui.status, **PRIVATE)
    check = functools.partial(handlers.check_upload, verb="detected")
    ui.image.change(check, ui.image, ui.image_note, show_progress="hidden", **REDRAW)


# --------------------------------------------------------------------------------------------- layout
def _examples(entries: list[dict], ui: SimpleNamespace, label: str, elem_id: str) -> gr.Examples:
    """Clickable thumbnails that fill the image and the names (and run: see _wire_segment)."""
    return gr.Examples([[e["path"], e["classes"]] for e in entries], [ui.image, ui.classes], label=label,
                       elem_id=elem_id, visible_columns=[0], examples_per_page=8, api_visibility="private")


def _segment_tab(service: Service) -> SimpleNamespace:
    """The Segment tab's components (inputs on the left, the answer on the right), by short name. On a
    phone the columns stack: image, names, the Segment button and the examples come first."""
    ui, registry = SimpleNamespace(), service.registry
    custom = registry.checkpoint_dir is not None or registry.hub.enabled
    default = registry.default
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=300):
            ui.image = ImageInput(label="Photo", type="filepath", sources=["upload", "webcam", "clipboard"],
                                  elem_id="image-input", height=250)
            ui.image_note = gr.Markdown("", elem_id="image-note")
            ui.classes = gr.Textbox(label="What to look for", lines=2, max_lines=8, max_length=MAX_TEXT_CHARS,
                                    placeholder="sky, tree, road, person, car", elem_id="classes-input",
                                    info="Names separated by commas (or new lines).")
            ui.run = gr.Button("Segment", variant="primary", elem_id="run-button")
            ui.examples = {}  # shown: the toy world's while the offline model is the default, else photos
            if service.toy:
                scenes = examples.toy_examples(Path(tempfile.mkdtemp(prefix="denseclip-toy-world-")))
                ui.examples[True] = _examples(scenes, ui, "Examples: scenes the offline model knows "
                                              "(click one)", "toy-examples")
            photos = examples.load_examples(HERE / "examples")
            if photos:
                ui.examples[False] = _examples(photos, ui, "Examples (click one to run it)", "examples")
            ui.model = ChoiceInput(registry.choices(), value=default.label if default else None,
                                   label="Model", elem_id="model-input", allow_custom_value=custom,
                                   info=page.model_hint(default))
            ui.preset = gr.Radio([CUSTOM, *PRESETS], value=CUSTOM, label="Class list", elem_id="preset-input")
            with gr.Accordion("More options", open=False, elem_id="more-options"):
                ui.unmatched = OptionInput([(v, k) for k, v in UNMATCHED_CHOICES.items()], value="closest",
                                           label="Pixels that match none of the names",
                                           elem_id="unmatched-input")
                ui.threshold = NumberInput(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.05,
                                           label="How low is low", elem_id="threshold-input", visible=False,
                                           info="Within this picture's scores: 0 labels every pixel, 1 only "
                                                "the best-matching spot.")
                ui.templates = ChoiceInput([(v, k) for k, v in TEMPLATE_CHOICES.items()], value="auto",
                                           label="Prompt templates (zero-shot)", elem_id="templates-input")
                ui.refine = gr.Checkbox(False, label="Refine edges (PAMR, slower)", elem_id="refine-input",
                                        info="Zero-shot models: the maps follow the photo's edges.")
        with gr.Column(scale=7, min_width=300):
            ui.overlay = gr.Image(label="Segmentation", type="filepath", interactive=False,
                                  elem_id="segmentation-output", buttons=["download", "fullscreen"])
            ui.opacity = NumberInput(0.0, 1.0, value=0.5, step=0.05, label="Colour opacity",
                                     elem_id="opacity-input")
            ui.readout = gr.Markdown("", elem_id="pixel-readout")
            ui.like = gr.Image(label="More like this", interactive=False, visible=False,
                               elem_id="like-output", buttons=["download", "fullscreen"])
            ui.status = gr.Markdown(label="Status", elem_id="time-output")
            ui.coverage = gr.HTML(elem_id="coverage-output")
            ui.gallery = gr.Gallery(label="Score maps", elem_id="scoremaps-output", columns=4, height="auto",
                                    object_fit="contain")
            ui.picker = gr.Dropdown([], label="Score map of any class", elem_id="scoremap-class",
                                    info="After a run: any class's map, also one not shown above.")
            with gr.Row():
                ui.label_map = gr.File(label="Label map (PNG)", elem_id="labelmap-output")
                ui.results = gr.File(label="Results (JSON)", elem_id="json-output")
    return ui


def _detect_tab(service: Service) -> SimpleNamespace:
    """The Detect tab's components (the tab is hidden when the server has no detector)."""
    ui, detectors = SimpleNamespace(), service.detectors
    gr.Markdown("Finds the kinds of objects a trained detector knows (the authors' detectors: COCO's 80, "
                "such as person, car and cup) and draws a box, a name and a score on each.",
                elem_id="detect-intro")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=300):
            ui.image = ImageInput(label="Photo", type="filepath", sources=["upload", "webcam", "clipboard"],
                                  elem_id="detect-image-input", height=250)
            ui.image_note = gr.Markdown("", elem_id="detect-image-note")
            default = detectors.default.label if detectors.default else None
            ui.model = ChoiceInput(detectors.choices(), value=default, label="Detector",
                                   elem_id="detector-input")
            ui.threshold = NumberInput(0.0, 1.0, value=detection.DEFAULT_THRESHOLD, step=0.05,
                                       label="Score threshold", elem_id="detect-threshold-input",
                                       info="Detections scoring less are left out.")
            ui.run = gr.Button("Detect", variant="primary", elem_id="detect-button")
            photos = [[e["path"]] for e in examples.load_examples(HERE / "examples")]
            gr.Examples(photos, [ui.image], label="Examples", examples_per_page=8, api_visibility="private")
        with gr.Column(scale=7, min_width=300):
            ui.picture = gr.Image(label="Detections", type="filepath", interactive=False,
                                  elem_id="detections-output", buttons=["download", "fullscreen"])
            ui.status = gr.Markdown(label="Status", elem_id="detect-status")
            ui.table = gr.Dataframe(headers=detection.TABLE_HEADERS, label="Detections, best first",
                                    interactive=False, elem_id="detections-table", wrap=True)
            ui.results = gr.File(label="Results (JSON)", elem_id="detect-json-output")
    return ui


def launch_options(config: AppConfig) -> dict:
    """Keyword arguments of demo.launch() that matter for safety and looks (tests use them too)."""
    theme = gr.themes.Soft(primary_hue="indigo", secondary_hue="green")
    return {"max_file_size": config.max_file_size, "allowed_paths": [], "show_error": True, "theme": theme,
            "css": page.CSS, "footer_links": ["api", "gradio"], "ssr_mode": False}


def serve(demo: gr.Blocks, prevent_thread_lock: bool = False, background: bool = True, **kwargs):
    """demo.launch with launch_options() at the config's address (a Space's when on a Space); first the
    background start-up (every model loaded, the preset class lists embedded)."""
    if background:
        demo.stop_background = demo.service.start_background()
    host, port = demo.config.bind_address()
    return demo.launch(server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock,
                       **{**launch_options(demo.config), **kwargs})


if __name__ == "__main__":  # `demo` at module level: Gradio's reload mode (and a Space's) looks for it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    demo = build_app(AppConfig.parse(description=__doc__.split("\n\n")[0]))
    serve(demo)
