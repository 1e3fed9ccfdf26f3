"""DenseCLIP demo: per-class pixel-text score maps and a segmentation for any class names (Gradio).

    python app.py                           # zero-shot CLIP RN50 / RN101 / ViT-B/16 (OpenAI weights)
    python app.py --tiny                    # untrained tiny models, offline UI checks (or DENSECLIP_TINY=1)
    python app.py --checkpoint run/ckpt     # + a DenseCLIP checkpoint: file, folder, Hub repo, authors' .pth
    python app.py --host 0.0.0.0 --port 7860

This file is also the Hugging Face Space's `app_file`. It only does UI work (layout, events, messages):
checking requests, models, image decoding, predicting, drawing and the downloads all come from
the package `webapp/` beside this file (which, like the library `denseclip`, never imports gradio).

What a web user can and cannot make the server do (the operator decides the rest on the command line):
- Models: pick one from the list, or type a Hugging Face Hub repo id ("user/repo", a DenseCLIP
  checkpoint saved with `denseclip.save_checkpoint`; turn off with --no-hub-checkpoints or
  DENSECLIP_ALLOW_HUB=0), or the name of a checkpoint inside the folder DENSECLIP_CHECKPOINT_DIR
  (--checkpoint-dir). Absolute paths, "..", and everything outside that folder are refused; any other
  server path can only be configured by the operator (--checkpoint). Checkpoints load without pickle
  (safetensors, or torch.load(weights_only=True) for the authors' .pth files).
- Images: uploads are capped (--max-file-size, default 30 MB); the file header is read first, and
  formats other than JPEG above --max-pixels (default 50 MP) are refused before decoding (JPEGs are
  decoded at a reduced size); everything is decoded by `denseclip.data.transforms.load_image`, at most
  --max-side pixels on the long side (default 1024). Gradio serves no server folder (allowed_paths=[]).
- Class names: at most 512 names of at most 200 characters; duplicates are merged with a warning. The
  box is never read as a file name or a dataset key (the presets fill it instead).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from denseclip.vocab import ADE20K_CLASSES, COCO_STUFF_CLASSES, PASCAL_VOC_CLASSES
from webapp import (  # noqa: F401  (MAX_*, TINY_*, parse_class_names: part of app's interface)
    MAX_CLASSES,
    MAX_GALLERY,
    MAX_PIXELS,
    MAX_SIDE,
    MAX_TEXT_CHARS,
    TEMPLATE_CHOICES,
    TINY_DC,
    TINY_ZS,
    ModelRegistry,
    OutputFolders,
    UserError,
    default_specs,
    mask_layers,
    parse_class_names,
    preset_text,
    render,
    weights_help,
)
from webapp import segment as run_request

log = logging.getLogger("denseclip.app")
HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"

MAX_FILE_SIZE = "30mb"  # upload limit (Gradio answers 413 above it)
ANNOTATED_CSS_OPACITY = 0.85  # gr.AnnotatedImage draws its masks at this CSS opacity
PRESETS = {
    "ADE20K (150)": ADE20K_CLASSES,
    "COCO-Stuff (171)": COCO_STUFF_CLASSES,
    "Pascal VOC (21)": PASCAL_VOC_CLASSES,
}
CUSTOM = "Custom"


def _shown(message: str) -> str:
    """Text for a toast / Markdown, which Gradio renders as (sanitised) HTML: '<model>' would vanish."""
    return message.replace("<", "\u2039").replace(">", "\u203a")


def _env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------------- image input
class ImageInput(gr.Image):
    """gr.Image whose value reaches the app as the uploaded file's path, *undecoded*.

    gr.Image(type="filepath") opens every upload with PIL first, so a non-image or an oversized file
    fails inside Gradio with an unhelpful message (a 20000x20000 JPEG is refused as a decompression bomb
    before the app could decode it at a reduced size). Here the app checks the header and decodes through
    denseclip's load_image (clear errors, bounded size). A subclass rather than a patched instance: Gradio
    re-creates components from their class (e.g. when an example fills them). Gradio writes a type stub
    for it, app.pyi, next to this file (git-ignored).
    """

    is_template = True  # the frontend of gr.Image (Gradio looks components up by the base class name)

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # pasted / API base64 images
            return _data_url_to_file(payload.url, self.GRADIO_CACHE)
        if payload.path is None:
            raise gr.Error("The image did not arrive; upload it again.")
        return str(payload.path)


def _data_url_to_file(url: str, cache_dir: str, max_bytes: int = 64 << 20) -> str:
    head, _, data = url.partition(",")
    if ";base64" not in head or len(data) > max_bytes * 4 // 3 + 4:
        raise gr.Error("The pasted image is not a base64 image, or it is too large.")
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raise gr.Error("The pasted image is not valid base64 data.") from None
    folder = Path(cache_dir) / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pasted_image"
    path.write_bytes(raw)
    return str(path)



# ------------------------------------------------------------------------------------------------ app
CSS = """
.gradio-container {max-width: 1400px !important; margin: auto;}
#title h1 {margin-bottom: 0.1em;}
#title p {margin-top: 0; color: var(--body-text-color-subdued);}
#model-status {border-left: 4px solid var(--color-accent); padding: 0.3em 0.9em; border-radius: 4px;
               background: var(--block-background-fill);}
#model-status.warn, #model-status:has(.warn) {border-left-color: #d97706;}
#time-output {min-height: 1.5em;}
#run-button {font-size: 1.05em;}
"""


def build_app(tiny: bool | None = None, checkpoints: Sequence[str] = (), checkpoint_dir: str | None = None,
              allow_hub: bool | None = None, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS,
              max_loaded: int = 2, preload: bool = True, device: str | None = None) -> gr.Blocks:
    """The Gradio Blocks app (not launched; see `serve`). Arguments default to the environment:
    DENSECLIP_TINY=1, DENSECLIP_CHECKPOINT_DIR, DENSECLIP_ALLOW_HUB=0."""
    tiny = _env_flag("DENSECLIP_TINY") if tiny is None else tiny
    checkpoint_dir = checkpoint_dir if checkpoint_dir is not None else os.environ.get("DENSECLIP_CHECKPOINT_DIR")
    allow_hub = _env_flag("DENSECLIP_ALLOW_HUB", True) if allow_hub is None else allow_hub
    registry = ModelRegistry(default_specs(tiny, checkpoints), checkpoint_dir, allow_hub, max_loaded, device)
    outputs_dir = OutputFolders()
    default_model = registry.labels[0]

    # ---------------------------------------------------------------------------- startup model check
    status_md = ""
    if preload:
        spec = registry.specs[default_model]
        try:
            registry.get(spec)
            if spec.untrained:
                status_md = (f"<span class='warn'></span>**{spec.label}**: an *untrained* model with random "
                             "weights (`--tiny`), for checking the interface offline. Its segmentations and score "
                             "maps are meaningless.")
            else:
                status_md = f"**{spec.label}** is loaded."
        except Exception as e:  # the app starts anyway and says what is missing
            log.warning("could not load %s: %s", spec.label, e)
            status_md = (f"<span class='warn'></span>⚠️ **{spec.label} is not available.** "
                         + _shown(weights_help(spec, e)).replace("\n\n", "<br>"))

    # ------------------------------------------------------------------------------------ the handler
    def segment(image, class_names, model=default_model, opacity=0.5, templates="auto",
                progress=gr.Progress()):
        """Segment `image` into `class_names` (comma/newline separated) with `model`.

        Returns the labelled overlay, the score-map gallery, the coverage chart, the label map (PNG), the
        per-class results (JSON) and a status line. Errors come back as gr.Error with a message.
        """
        try:
            seg = run_request(registry, image, class_names, model, opacity, templates, max_side, max_pixels,
                              progress=lambda fraction, desc: progress(fraction, desc=desc))
            return _show(seg)
        except UserError as e:
            raise gr.Error(_shown(str(e)), duration=None) from None
        except gr.Error:
            raise
        except MemoryError:
            raise gr.Error("Out of memory: try a smaller image or fewer class names.", duration=None) from None
        except Exception as e:  # a bug: log it, say so, keep serving
            log.error("segment failed:\n%s", traceback.format_exc())
            raise gr.Error(_shown(f"Unexpected error ({type(e).__name__}: {str(e)[:300]}). The server logged the "
                                  "details; please report it."), duration=None) from None

    def _overlay(rgb, labels, names, palette, order, opacity) -> gr.AnnotatedImage:
        base, anns, cmap = mask_layers(rgb, labels, names, palette, order, opacity,
                                       display_opacity=ANNOTATED_CSS_OPACITY)
        return gr.AnnotatedImage(value=(base, anns), color_map=cmap)

    def _show(seg):
        pred, spec, notes, labels = seg.pred, seg.spec, seg.notes, seg.pred.labels
        for n in notes:
            gr.Warning(_shown(n))
        out = render(seg, outputs_dir.new())
        cov, order = out.stats.coverage, out.stats.order
        overlay = _overlay(seg.rgb, labels, pred.names, out.palette, order, seg.opacity)
        top = ", ".join(f"{pred.names[i]} {cov[i] * 100:.0f}%" for i in order[:3] if cov[i] > 0)
        untrained = " · ⚠️ untrained model: random output" if spec.untrained else ""
        status = (f"**{out.seconds:.2f} s** · {_shown(spec.label)}{untrained} · {len(pred.names)} classes · "
                  f"{labels.shape[1]}×{labels.shape[0]} px · largest: {_shown(top)}")
        if notes:
            status += "\n\n" + "\n".join(f"- {_shown(n)}" for n in notes)
        state = {"rgb": seg.rgb, "labels": labels, "names": pred.names, "palette": out.palette, "order": order}
        return overlay, out.gallery, out.coverage_image, str(out.label_map), str(out.results), status, state

    def recolor(state, opacity):
        if not state:
            return gr.skip()
        return _overlay(state["rgb"], state["labels"], state["names"], state["palette"], state["order"],
                        float(opacity))

    def fill_preset(preset):
        return preset_text(PRESETS[preset]) if preset in PRESETS else gr.skip()

    def match_preset(text):
        for name, classes in PRESETS.items():
            if text == preset_text(classes):
                return name
        return CUSTOM

    # ------------------------------------------------------------------------------------------ layout
    examples = []
    if EXAMPLES_DIR.is_dir():
        try:  # class names suggested for each scene (written by examples/make_examples.py)
            EXAMPLE_CLASSES = json.loads((EXAMPLES_DIR / "classes.json").read_text("utf-8"))
        except (OSError, ValueError):
            EXAMPLE_CLASSES = {}
        for path in sorted(EXAMPLES_DIR.glob("*.jpg")):
            examples.append([str(path), EXAMPLE_CLASSES.get(path.name, "sky, tree, building, road, person")])

    with gr.Blocks(title="DenseCLIP: pixel-text score maps", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# DenseCLIP · pixel-text score maps\n"
            "Type any class names: CLIP's dense image embeddings are matched against each name's text "
            "embedding, giving one score map per class and a segmentation (zero-shot, training-free), or use a "
            "trained DenseCLIP checkpoint ([Rao et al., CVPR 2022](https://arxiv.org/abs/2112.01518)).",
            elem_id="title")
        gr.Markdown(status_md, elem_id="model-status", visible=bool(status_md))
        state = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=340):
                image_in = ImageInput(label="Image", type="filepath", sources=["upload", "webcam", "clipboard"],
                                      elem_id="image-input", height=340)
                preset_in = gr.Radio([CUSTOM, *PRESETS], value=CUSTOM, label="Class list",
                                     elem_id="preset-input")
                classes_in = gr.Textbox(
                    label="Class names", lines=3, max_lines=8, max_length=MAX_TEXT_CHARS,
                    placeholder="sky, tree, road, person, car", elem_id="classes-input",
                    info="Comma or newline separated. A DenseCLIP checkpoint predicts its own classes: names "
                         "pick a subset (empty = all).")
                with gr.Row():
                    model_in = gr.Dropdown(
                        registry.labels, value=default_model, label="Model", allow_custom_value=True,
                        elem_id="model-input", scale=3,
                        info="Or type a Hub repo id of a DenseCLIP checkpoint (user/repo)"
                             + (", or a checkpoint name from the server's folder" if registry.checkpoint_dir else "")
                             + ".")
                    opacity_in = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity",
                                           elem_id="opacity-input", scale=2)
                with gr.Accordion("Advanced", open=False):
                    templates_in = gr.Dropdown([(v, k) for k, v in TEMPLATE_CHOICES.items()], value="auto",
                                               label="Prompt templates (zero-shot)", elem_id="templates-input")
                run = gr.Button("Segment", variant="primary", elem_id="run-button")
                if examples:
                    gr.Examples(examples, inputs=[image_in, classes_in], label="Examples (synthetic scenes, CC0)",
                                examples_per_page=4)
            with gr.Column(scale=7, min_width=400):
                overlay_out = gr.AnnotatedImage(label="Segmentation", elem_id="segmentation-output", height=420,
                                                show_legend=True)
                time_out = gr.Markdown(label="Time taken", elem_id="time-output")
                gallery_out = gr.Gallery(label="Score maps · largest coverage first", elem_id="scoremaps-output",
                                         columns=3, height="auto", object_fit="contain", format="png")
                with gr.Row():
                    coverage_out = gr.Image(label="Coverage", show_label=False, elem_id="coverage-output",
                                            format="png", interactive=False, scale=3,
                                            buttons=["download", "fullscreen"])
                    with gr.Column(scale=2, min_width=200):
                        labels_out = gr.File(label="Label map (PNG)", elem_id="labelmap-output")
                        json_out = gr.File(label="Per-class results (JSON)", elem_id="json-output")

        run.click(segment, inputs=[image_in, classes_in, model_in, opacity_in, templates_in],
                  outputs=[overlay_out, gallery_out, coverage_out, labels_out, json_out, time_out, state],
                  api_name="segment", concurrency_limit="default")
        opacity_in.release(recolor, [state, opacity_in], overlay_out, api_visibility="private",
                           concurrency_limit=4, concurrency_id="recolor", show_progress="hidden")
        preset_in.input(fill_preset, preset_in, classes_in, api_visibility="private", queue=False)
        classes_in.change(match_preset, classes_in, preset_in, api_visibility="private", queue=False)
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.registry = registry  # for tests and scripts
    return demo


def launch_options(max_file_size: str | int = MAX_FILE_SIZE) -> dict:
    """Keyword arguments of demo.launch() that matter for safety and looks (tests use them too)."""
    theme = gr.themes.Soft(primary_hue="indigo", secondary_hue="green")
    return {"max_file_size": max_file_size, "allowed_paths": [], "show_error": True, "theme": theme,
            "css": CSS, "footer_links": ["api", "gradio"], "ssr_mode": False}


def serve(demo: gr.Blocks, host: str | None = None, port: int | None = None, prevent_thread_lock: bool = False,
          max_file_size: str | int = MAX_FILE_SIZE, **kwargs):
    """demo.launch with launch_options(); host/port None = Gradio's defaults (GRADIO_SERVER_NAME/PORT)."""
    options = {**launch_options(max_file_size), **kwargs}
    return demo.launch(server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock, **options)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=None, help="address to listen on (default GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="PATH_OR_REPO",
                   help="a DenseCLIP checkpoint to offer (our .safetensors / folder, a Hub repo id, the authors' "
                        ".pth); repeatable; the first is the default model")
    p.add_argument("--checkpoint-dir", default=None,
                   help="folder whose checkpoints web users may pick by name (default DENSECLIP_CHECKPOINT_DIR)")
    p.add_argument("--tiny", action="store_true", default=None,
                   help="untrained tiny models for offline UI checks (or DENSECLIP_TINY=1)")
    p.add_argument("--no-hub-checkpoints", action="store_true", help="web users may not load Hub repos")
    p.add_argument("--max-side", type=int, default=MAX_SIDE, help="long side images are decoded to")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="largest non-JPEG image, in pixels")
    p.add_argument("--max-file-size", default=MAX_FILE_SIZE, help="upload limit, e.g. 30mb")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    demo = build_app(tiny=args.tiny, checkpoints=args.checkpoint, checkpoint_dir=args.checkpoint_dir,
                     allow_hub=False if args.no_hub_checkpoints else None, max_side=args.max_side,
                     max_pixels=args.max_pixels)
    serve(demo, args.host, args.port, max_file_size=args.max_file_size)


if __name__ == "__main__":
    main()
