"""DenseCLIP demo: which of your words is where in a photo: per-class score maps and a segmentation.

    python app.py                           # zero-shot CLIP ViT-B/16 (NACLIP; ClearCLIP), RN50, RN101
    python app.py --tiny                    # untrained tiny models, offline UI checks (or DENSECLIP_TINY=1)
    python app.py --checkpoint run/ckpt     # + a DenseCLIP checkpoint: file, folder, Hub repo, authors' .pth
    python app.py --hub-allow my-lab/       # visitors may name Hub checkpoints of my-lab (size-capped)

This file is the UI only (layout, events, messages) and the Hugging Face Space's `app_file`; the logic
(uploads, limits, models, predicting, drawing, files) is the gradio-free package `webapp/` beside it.

What a visitor can and cannot make the server do (the operator decides the rest on the command line):
- Models: one from the list, or a checkpoint name inside DENSECLIP_CHECKPOINT_DIR (--checkpoint-dir);
  Hub repos only if the operator allows them (--hub-allow, DENSECLIP_HUB_ALLOW: repo ids or owners),
  below a size cap (--hub-max-mb) read from the Hub before downloading. Server paths are refused.
- Images: uploads up to --max-file-size (30 MB); the header is read first, and images above
  --max-pixels (50 MP; JPEGs are decoded at a reduced size instead) are refused without decoding;
  decoded at most --max-side (1024) pixels on the long side. No server folder is served.
- Class names: at most 512 names of at most 200 characters; repeats are merged.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from webapp import (
    MAX_CLASSES,  # noqa: F401  (part of the app's interface for scripts and tests)
    MAX_GALLERY,
    MAX_PIXELS,
    MAX_SIDE,
    MAX_TEXT_CHARS,
    PRESETS,
    TEMPLATE_CHOICES,
    TINY_DC,  # noqa: F401
    TINY_ZS,  # noqa: F401
    UNMATCHED_CHOICES,
    HubAccess,
    Limits,
    ModelRegistry,
    Options,
    OutputFolders,
    UserError,
    default_specs,
    describe_upload,
    parse_class_names,  # noqa: F401
    preset_text,
    render,
    results,
)
from webapp import segment as run_request
from webapp.catalog import load_examples
from webapp.images import save_data_url
from webapp.page import CSS, START_JS, WAITED_JS, banner, legend_html, md, md_keep_bold, status_line, toast

log = logging.getLogger("denseclip.app")
HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
MAX_FILE_SIZE = "30mb"  # upload limit (Gradio answers 413 above it)
MAX_ACTIVE = 4  # requests in progress at once (predictions still run one at a time; downloads do not wait)
CUSTOM = "Custom"
SPACE_PORT = 7860


def _env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


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


# ------------------------------------------------------------------------------------------------ app
def build_app(tiny: bool | None = None, checkpoints: Sequence[str] = (), checkpoint_dir: str | None = None,
              hub: HubAccess | None = None, limits: Limits = Limits(), max_loaded: int = 3,
              preload: bool = True, device: str | None = None) -> gr.Blocks:
    """The Gradio Blocks app (not launched; see `serve`). Defaults come from the environment:
    DENSECLIP_TINY=1, DENSECLIP_CHECKPOINT_DIR, DENSECLIP_HUB_ALLOW, DENSECLIP_HUB_MAX_MB."""
    tiny = _env_flag("DENSECLIP_TINY") if tiny is None else tiny
    if checkpoint_dir is None:
        checkpoint_dir = os.environ.get("DENSECLIP_CHECKPOINT_DIR")
    registry = ModelRegistry(default_specs(tiny, checkpoints), checkpoint_dir, hub or HubAccess.from_env(),
                             max_loaded, device)
    folders = OutputFolders()
    if preload:  # the default model now (the page says if it failed); the others when served
        try:
            registry.get(registry.default)
        except Exception:
            log.warning("%s", registry.failures.get(registry.default.label, "default model failed to load"))

    def segment(image, class_names, model=registry.default.label, opacity=0.5, templates="auto",
                unmatched="closest", threshold=0.2, progress=gr.Progress()):
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
        options = Options(model, opacity, templates, unmatched, threshold)
        folder = folders.new()
        try:
            if isinstance(image, str) and image.startswith("data:"):
                image = save_data_url(image, folder)
            seg = run_request(registry, image, class_names, options, limits,
                              progress=lambda fraction, desc: progress(fraction, desc=desc))
            out = render(seg, folder)
        except UserError as e:
            log.info("refused a request: %s", e)
            raise gr.Error(toast(str(e)), duration=None, print_exception=False) from None
        except MemoryError:
            log.warning("out of memory in a request")
            raise gr.Error("The server ran out of memory: try a smaller image or fewer class names.",
                           duration=None, print_exception=False) from None
        except Exception as e:  # a bug: log it, say so, keep serving
            log.exception("segment failed")
            raise gr.Error(f"Something went wrong on the server ({type(e).__name__}). It is logged; please "
                           "try again or report it.", duration=None, print_exception=False) from None
        for note in seg.notes:
            if note.loud:
                gr.Warning(toast(note.text))
        return (str(out.segmentation), out.gallery, str(out.label_map), str(out.results),
                status_line(seg, out), out.state)

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

    def check_upload(path):
        try:
            return md(describe_upload(path, limits.max_side, limits.max_pixels))
        except UserError as e:
            gr.Warning(toast(str(e)))
            return f"⚠️ {md(str(e))}"

    def on_load():
        text = banner(registry)
        return gr.Dropdown(choices=registry.choices()), gr.Markdown(text, visible=bool(text))

    with gr.Blocks(title="DenseCLIP: which word is where", delete_cache=(1800, 3600)) as demo:
        ui = _layout(registry)
        state, saved_text = gr.State(None), gr.State("")
        inputs = [ui.image, ui.classes, ui.model, ui.opacity, ui.templates, ui.unmatched, ui.threshold]
        outputs = [ui.overlay, ui.gallery, ui.label_map, ui.results, ui.status, state]
        done = ui.run.click(segment, inputs, outputs, api_name="segment", js=START_JS,
                            concurrency_limit=MAX_ACTIVE, concurrency_id="segment")
        private = {"api_visibility": "private", "queue": False}
        details = [ui.coverage, ui.gallery, ui.picker, ui.readout]
        shown = done.success(show_details, state, details, **private)
        shown.success(None, ui.status, ui.status, js=WAITED_JS, api_visibility="private")
        done.failure(failed, None, ui.status, **private)
        redraw = {"api_visibility": "private", "concurrency_limit": 4, "concurrency_id": "redraw"}
        ui.opacity.release(recolour, [state, ui.opacity], ui.overlay, show_progress="hidden", **redraw)
        ui.picker.input(show_score_map, [state, ui.picker], ui.gallery, **redraw)
        ui.overlay.select(read_pixel, state, ui.readout, **private)
        ui.preset.input(fill_preset, [ui.preset, ui.classes, saved_text], [ui.classes, saved_text], **private)
        ui.classes.change(match_preset, ui.classes, ui.preset, **private)
        ui.image.change(check_upload, ui.image, ui.image_note, show_progress="hidden", **redraw)  # + a toast
        ui.unmatched.change(lambda u: gr.Slider(visible=u == "threshold"), ui.unmatched, ui.threshold,
                            **private)
        demo.load(on_load, None, [ui.model, ui.banner], **private)
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.registry = registry  # for tests and scripts
    return demo


def _layout(registry: ModelRegistry) -> SimpleNamespace:
    """The page's components (inputs on the left, the answer on the right), by short name."""
    ui = SimpleNamespace()
    gr.Markdown("# DenseCLIP · which word is where\n"
                "Type what to look for: CLIP's dense image embeddings are matched with each name's "
                "text embedding, giving one score map per name and a segmentation, without training for "
                "your names ([DenseCLIP, Rao et al., CVPR 2022](https://arxiv.org/abs/2112.01518)).",
                elem_id="title")
    text = banner(registry)
    ui.banner = gr.Markdown(text, elem_id="model-status", visible=bool(text))
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


def launch_options(max_file_size: str | int = MAX_FILE_SIZE) -> dict:
    """Keyword arguments of demo.launch() that matter for safety and looks (tests use them too)."""
    theme = gr.themes.Soft(primary_hue="indigo", secondary_hue="green")
    return {"max_file_size": max_file_size, "allowed_paths": [], "show_error": True, "theme": theme,
            "css": CSS, "footer_links": ["api", "gradio"], "ssr_mode": False}


def serve(demo: gr.Blocks, host: str | None = None, port: int | None = None,
          prevent_thread_lock: bool = False, max_file_size: str | int = MAX_FILE_SIZE,
          check_models: bool = True, **kwargs):
    """demo.launch with launch_options(); host/port None = bind_address's choice, else Gradio's defaults.

    check_models: try every listed model in a background thread, so that those that cannot load are
    marked unavailable before anyone picks them.
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
                     hub=hub, limits=Limits(args.max_side, args.max_pixels))
    serve(demo, args.host, args.port, max_file_size=args.max_file_size)


if __name__ == "__main__":
    main()
