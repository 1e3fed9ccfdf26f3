"""DenseCLIP demo: per-class pixel-text score maps and a segmentation for any class names (Gradio).

    python app.py                           # zero-shot CLIP RN50 / RN101 / ViT-B/16 (OpenAI weights)
    python app.py --tiny                    # untrained tiny models, offline UI checks (or DENSECLIP_TINY=1)
    python app.py --checkpoint run/ckpt     # + a DenseCLIP checkpoint: file, folder, Hub repo, authors' .pth
    python app.py --host 0.0.0.0 --port 7860

This file is also the Hugging Face Space's `app_file`. It only does UI work: models, image decoding,
drawing and class-name cleaning all come from `denseclip` (which never imports gradio).

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
import atexit
import base64
import binascii
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import traceback
import unicodedata
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

import denseclip
from denseclip import viz
from denseclip.data import transforms as dtransforms
from denseclip.vocab import (
    ADE20K_CLASSES,
    COCO_STUFF_CLASSES,
    PASCAL_VOC_CLASSES,
    clean_class_names,
    get_templates,
)

log = logging.getLogger("denseclip.app")
HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"

# ------------------------------------------------------------------------------------------------ limits
MAX_SIDE = 1024  # decoded images are downscaled to this long side (outputs are at this size)
MAX_PIXELS = 50_000_000  # non-JPEG images above this are refused from their header (full decode needed)
MAX_FILE_SIZE = "30mb"  # upload limit (Gradio answers 413 above it)
MAX_CLASSES = 512
MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 40_000  # the whole class box (COCO-Stuff's 171 names are ~1.6k characters)
MAX_GALLERY = 12  # score maps shown (largest coverage first); the JSON has every class
MAX_LEGEND = 40  # classes drawn as separate overlay layers; the rest still get their colour
MAX_OUTPUT_ELEMENTS = 1 << 23  # bound on K*h*w of the zero-shot score maps kept for drawing
GALLERY_SIDE = 384  # score maps are drawn 300 px tall: computed at about this size
AUTO_TEMPLATE_LIMIT = 40  # "auto" templates: 7 prompts a class up to this many classes, then 1
MAX_PROMPTS = 6000  # class names x templates encoded in one request (CLIP's text tower is slow on CPU)
ANNOTATED_CSS_OPACITY = 0.85  # gr.AnnotatedImage draws its masks at this CSS opacity

TINY_ZS = "Tiny zero-shot CLIP (untrained)"
TINY_DC = "Tiny DenseCLIP (untrained)"
ZERO_SHOT_MODELS = {  # label -> open_clip model name (OpenAI weights)
    "Zero-shot CLIP RN50 (OpenAI)": "RN50",
    "Zero-shot CLIP RN101 (OpenAI)": "RN101",
    "Zero-shot CLIP ViT-B/16 (OpenAI)": "ViT-B-16",
}
PRESETS = {
    "ADE20K (150)": ADE20K_CLASSES,
    "COCO-Stuff (171)": COCO_STUFF_CLASSES,
    "Pascal VOC (21)": PASCAL_VOC_CLASSES,
}
CUSTOM = "Custom"
TEMPLATE_CHOICES = {
    "auto": "auto (7 prompts a class; 1 above 40 classes)",
    "single": "single ('a photo of a {}.')",
    "simple": "simple (7 scene prompts)",
    "imagenet": "imagenet (CLIP's 80 prompts, slow)",
}
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")


class UserError(ValueError):
    """A problem with what the person gave us; its message is shown in the UI as is."""


def _shown(message: str) -> str:
    """Text for a toast / Markdown, which Gradio renders as (sanitised) HTML: '<model>' would vanish."""
    return message.replace("<", "\u2039").replace(">", "\u203a")


def _env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------------------------------ class names
def preset_text(names: Sequence[str]) -> str:
    """The class box's text for a preset (cleaned names, comma separated; newlines if a name has a comma)."""
    names = clean_class_names(names)
    return ("\n" if any("," in n for n in names) else ", ").join(names)


def parse_class_names(text: str | None, allow_empty: bool = False) -> tuple[tuple[str, ...], list[str]]:
    """The class box -> (cleaned unique names, notes for the person). Comma- and/or newline-separated.

    Never reads files or dataset keys (unlike vocab.get_class_names): the box is untrusted input.
    Control characters are dropped; duplicates (case-insensitive) are merged, keeping the first.
    """
    text = "" if text is None else text
    if not isinstance(text, str):
        raise UserError(f"class names must be text, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise UserError(f"The class list is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,}. "
                        "Shorten it or split it over several runs.")
    pieces = [p for line in text.splitlines() for p in line.split(",")]
    raw = []
    for piece in pieces:
        piece = "".join(c for c in piece if not unicodedata.category(c).startswith("C") or c.isspace())
        if piece.strip():
            raw.append(piece)
    if not raw:
        if allow_empty:
            return (), []
        raise UserError("Type at least one class name (comma or newline separated, e.g. 'sky, tree, "
                        "person'), or pick a class list preset.")
    for i, name in enumerate(raw):
        if len(name.strip()) > MAX_NAME_CHARS:
            raise UserError(f"Class name {i + 1} is {len(name.strip()):,} characters long "
                            f"('{name.strip()[:40]}...'); keep each name under {MAX_NAME_CHARS} characters.")
    names = clean_class_names(raw, dedupe=True)
    notes = []
    if len(names) < len(raw):
        seen, dups = set(), []
        for n in raw:
            key = " ".join(unicodedata.normalize("NFC", n).split()).casefold()
            if key in seen and key not in dups:
                dups.append(key)
            seen.add(key)
        notes.append(f"Merged {len(raw) - len(names)} duplicate class name(s) (kept the first of each): "
                     f"{', '.join(repr(d) for d in dups[:8])}{' ...' if len(dups) > 8 else ''}.")
    if len(names) > MAX_CLASSES:
        raise UserError(f"{len(names)} class names given; the limit is {MAX_CLASSES}.")
    return names, notes


# ----------------------------------------------------------------------------------------------- images
_PIL_LOCK = threading.Lock()  # PIL's decompression-bomb limit is a global; change it under a lock


def image_header(path: str | Path) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) from the file header without decoding the pixels."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise UserError("The image file is empty (0 bytes).")
    with _PIL_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = dtransforms.MAX_DECODE_PIXELS
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    w, h = int(im.width), int(im.height)
                    try:
                        if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF: shown rotated by 90 degrees
                            w, h = h, w
                    except Exception:  # a broken EXIF block is load_image's business, not ours
                        pass
                    return str(im.format), (w, h)
        except UnidentifiedImageError:
            raise UserError("This file is not an image, or its format is not supported "
                            "(use JPEG, PNG, WebP, BMP, GIF or TIFF).") from None
        except Image.DecompressionBombError:
            raise UserError(f"The image is larger than {dtransforms.MAX_DECODE_PIXELS:,} pixels and cannot be "
                            "decoded safely; downscale it first.") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"The image file is corrupt or truncated ({e}).") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old


def read_image(path: str | Path, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Check the header, then decode with denseclip's load_image (any mode, EXIF rotation, downscale).

    Returns the RGB uint8 array (long side <= max_side) and facts about the file for the JSON.
    """
    path = Path(path)
    fmt, (w, h) = image_header(path)
    if w == 0 or h == 0:
        raise UserError(f"The image has no pixels ({w}x{h}).")
    if fmt not in ("JPEG", "MPO") and w * h > max_pixels:
        raise UserError(f"The image is {w:,}x{h:,} pixels ({w * h / 1e6:.0f} MP). {fmt} images above "
                        f"{max_pixels / 1e6:.0f} MP must be decoded in full, which this server does not do; "
                        f"downscale it (or save it as JPEG, which is decoded at a reduced size).")
    try:
        rgb = dtransforms.load_image(path, max_side=max_side)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"Could not read the image: {_scrub(str(e), path)}") from None
    except MemoryError:
        raise UserError("The image is too large to decode in the memory this server has.") from None
    info = {"name": path.name, "format": fmt, "original_size": [h, w], "size": list(rgb.shape[:2]),
            "downscaled": max(w, h) > max_side}
    return rgb, info


def _scrub(message: str, path: Path) -> str:
    """Server paths out of a message: the file's own path -> its name."""
    return message.replace(str(path), path.name).replace(str(path.parent), "<uploads>")


def _image_input_class() -> type[gr.Image]:
    """gr.Image whose value reaches the app as the uploaded file's path, *undecoded*.

    gr.Image(type="filepath") opens every upload with PIL first, so a non-image or an oversized file
    fails inside Gradio with an unhelpful message (a 20000x20000 JPEG is refused as a decompression bomb
    before the app could decode it at a reduced size). Here the app checks the header and decodes through
    denseclip's load_image (clear errors, bounded size). A subclass rather than a patched instance: Gradio
    re-creates components from their class (e.g. when an example fills them).
    """
    import gradio.component_meta as meta

    # Gradio writes a type stub (app.pyi, a copy of this file) next to any module defining a component;
    # we do not want that file in the source tree, so skip it while the class is created.
    stub_writer = getattr(meta, "create_or_modify_pyi", None)
    meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        class ImageInput(gr.Image):
            is_template = True  # the frontend of gr.Image (Gradio looks components up by the base class name)

            def preprocess(self, payload):
                if payload is None:
                    return None
                if payload.url and payload.url.startswith("data:"):  # pasted / API base64 images
                    return _data_url_to_file(payload.url, self.GRADIO_CACHE)
                if payload.path is None:
                    raise gr.Error("The image did not arrive; upload it again.")
                return str(payload.path)
    finally:
        if stub_writer is not None:
            meta.create_or_modify_pyi = stub_writer
    return ImageInput


ImageInput = _image_input_class()


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


# ----------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    label: str
    kind: str  # "zeroshot" | "denseclip"
    source: str  # open_clip name, checkpoint path, Hub repo id, or "tiny"
    untrained: bool = False
    from_hub: bool = False  # a Hub repo id typed in the UI (downloaded by the app, never a server path)


def _hub_checkpoint_file(repo_id: str) -> str:
    """model.safetensors of a DenseCLIP Hub repo, from the cache or the Hub; fails fast offline."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from denseclip.weights import CHECKPOINT_NAME, hub_reachable

    cached = try_to_load_from_cache(repo_id, CHECKPOINT_NAME)
    if isinstance(cached, str):
        return cached
    if not hub_reachable():
        raise denseclip.WeightsUnavailableError(
            f"The DenseCLIP checkpoint {repo_id!r} is not in this server's Hugging Face cache and the Hub is "
            "unreachable (or HF_HUB_OFFLINE=1). Download it on a connected machine, or ask the operator to "
            "start the app with --checkpoint PATH.")
    try:
        return hf_hub_download(repo_id, CHECKPOINT_NAME)
    except Exception as e:  # no such repo, no such file, gated, network trouble
        raise denseclip.WeightsUnavailableError(
            f"Could not download {CHECKPOINT_NAME} from the Hub repo {repo_id!r}: {type(e).__name__}: {e}") from e


class ModelRegistry:
    """The models a person can pick, loaded once on first use and kept (least recently used dropped)."""

    def __init__(self, specs: Sequence[ModelSpec], checkpoint_dir: str | None = None, allow_hub: bool = True,
                 max_loaded: int = 2, device: str | None = None):
        self.specs: dict[str, ModelSpec] = {s.label: s for s in specs}
        self.checkpoint_dir = Path(checkpoint_dir).resolve() if checkpoint_dir else None
        self.allow_hub = allow_hub
        self.max_loaded = max(1, max_loaded)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._loaded: OrderedDict[ModelSpec, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()
        if self.checkpoint_dir is not None and self.checkpoint_dir.is_dir():
            for p in sorted(self.checkpoint_dir.iterdir()):
                if p.suffix in CHECKPOINT_SUFFIXES or (p.is_dir() and (p / "model.safetensors").is_file()):
                    spec = ModelSpec(f"DenseCLIP: {p.name}", "denseclip", str(p))
                    self.specs.setdefault(spec.label, spec)

    @property
    def labels(self) -> list[str]:
        return list(self.specs)

    def resolve(self, choice: str | None) -> ModelSpec:
        """A list label, a checkpoint name inside checkpoint_dir, or a Hub repo id -> ModelSpec."""
        choice = (choice or "").strip()
        if not choice:
            return next(iter(self.specs.values()))
        if choice in self.specs:
            return self.specs[choice]
        local = self._in_checkpoint_dir(choice)
        if local is not None:
            return ModelSpec(f"DenseCLIP: {choice}", "denseclip", str(local))
        if self.allow_hub and REPO_ID.match(choice) and ".." not in choice:
            return ModelSpec(f"DenseCLIP: {choice} (Hub)", "denseclip", choice, from_hub=True)
        where = []
        if self.allow_hub:
            where.append("a Hugging Face Hub repo id of a DenseCLIP checkpoint ('user/repo')")
        if self.checkpoint_dir is not None:
            where.append("the name of a checkpoint file or folder in the server's checkpoint folder")
        extra = f", or {' or '.join(where)}" if where else ""
        raise UserError(f"Unknown model {choice[:80]!r}. Choose one from the list{extra}. Server paths are not "
                        "accepted here; the operator can add checkpoints with --checkpoint or DENSECLIP_CHECKPOINT_DIR.")

    def scrub(self, message: str) -> str:
        """The checkpoint folder's server path out of a message shown to web users."""
        if self.checkpoint_dir is not None:
            message = message.replace(str(self.checkpoint_dir), "<checkpoint folder>")
        return message

    def _in_checkpoint_dir(self, name: str) -> Path | None:
        if self.checkpoint_dir is None or "\x00" in name or "\\" in name:
            return None
        rel = Path(name)
        if rel.is_absolute() or name.startswith("~") or any(part in ("..", "") for part in rel.parts):
            return None
        path = self.checkpoint_dir / rel
        try:  # symlinks inside the folder are the operator's choice; lexically we never leave it
            return path if path.exists() else None
        except OSError:
            return None

    def get(self, spec: ModelSpec) -> torch.nn.Module:
        with self._lock:
            if spec in self._loaded:
                self._loaded.move_to_end(spec)
                return self._loaded[spec]
            model = self._load(spec)
            self._loaded[spec] = model
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return model

    def _load(self, spec: ModelSpec) -> torch.nn.Module:
        t0 = time.perf_counter()
        if spec.kind == "zeroshot" and spec.source == "tiny":
            from denseclip.config import TINY_VIT_ARCH
            from denseclip.zeroshot import ZeroShotSegmenter

            # the same random model every start (stable screenshots); a tiny random ViT's maps vary more
            # across the image than a tiny random ResNet's, so the UI shows several classes
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                clip = denseclip.create_clip("tiny", None, arch=TINY_VIT_ARCH)
            model = ZeroShotSegmenter(clip, "tiny", is_random=True, size=224).to(self.device)
        elif spec.kind == "zeroshot":
            from denseclip.zeroshot import ZeroShotSegmenter

            model = ZeroShotSegmenter.from_pretrained(spec.source, pretrained="openai", device=self.device)
        elif spec.source == "tiny":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = denseclip.build_model("denseclip-tiny-rn", pretrained=False)
            model = model.to(self.device).eval()
        else:
            path = _hub_checkpoint_file(spec.source) if spec.from_hub else spec.source
            model = denseclip.load_checkpoint(path, device=self.device)
        log.info("loaded %s in %.1f s", spec.label, time.perf_counter() - t0)
        return model


def default_specs(tiny: bool, checkpoints: Sequence[str] = ()) -> list[ModelSpec]:
    """The model list: tiny untrained models first in --tiny mode, CLI checkpoints, the zero-shot CLIPs."""
    specs = []
    if tiny:
        specs += [ModelSpec(TINY_ZS, "zeroshot", "tiny", untrained=True),
                  ModelSpec(TINY_DC, "denseclip", "tiny", untrained=True)]
    for ckpt in checkpoints:
        name = Path(str(ckpt).rstrip("/")).name or str(ckpt)
        specs.append(ModelSpec(f"DenseCLIP: {name}", "denseclip", str(ckpt)))
    specs += [ModelSpec(label, "zeroshot", name) for label, name in ZERO_SHOT_MODELS.items()]
    return specs


def _weights_help(spec: ModelSpec, error: Exception) -> str:
    """What is missing and how to provide it (first), then the library's own explanation."""
    if spec.kind == "zeroshot":
        return (f"Its weights (OpenAI CLIP {spec.source}) are not on this server and could not be downloaded "
                f"from the Hugging Face Hub. To provide them: put OpenAI's `{spec.source}.pt` (or "
                f"`{spec.source}-openai.safetensors`) in a folder and set `DENSECLIP_WEIGHTS_DIR` to it before "
                "starting the app, or let the server reach the Hub (unset `HF_HUB_OFFLINE`). For a DenseCLIP "
                "checkpoint: `python app.py --checkpoint PATH_OR_REPO`. To try the interface without weights: "
                f"`python app.py --tiny`.\n\nDetails: {error}")
    return str(error)


# --------------------------------------------------------------------------------------------- outputs
@dataclass
class Prediction:
    labels: np.ndarray  # (H, W) int64 class index into names; -1 = unlabelled
    maps: torch.Tensor  # (K, h, w) float32: cosine scores (zero-shot) or probabilities (DenseCLIP)
    names: tuple[str, ...]
    map_kind: str
    timing: dict
    info: dict


def run_zeroshot(model, rgb: np.ndarray, names: tuple[str, ...], templates: str) -> Prediction:
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


def _match_classes(model_names: Sequence[str], names: Sequence[str]) -> tuple[list[int], list[str]]:
    index = {" ".join(n.split()).casefold(): i for i, n in reversed(list(enumerate(model_names)))}
    idx, unknown = [], []
    for n in names:
        i = index.get(n.casefold())
        (unknown.append(n) if i is None else idx.append(i))
    return idx, unknown


def run_denseclip(model, rgb: np.ndarray, names: tuple[str, ...]) -> tuple[Prediction, list[str]]:
    """A DenseCLIP checkpoint predicts its own classes; typed names choose a subset (argmax over those)."""
    notes = []
    model_names = tuple(" ".join(n.split()) for n in model.cfg.class_names)
    if names:
        idx, unknown = _match_classes(model_names, names)
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
    r = denseclip.predict(model, small)
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


def class_palette(names: Sequence[str]) -> np.ndarray:
    """(K, 3) uint8 colours: the ADE20K palette for the ADE20K classes (the convention of the paper's
    figures), vivid tab20 colours for up to 20 classes, else viz.make_palette (ADE20K's, then generated)."""
    k = len(names)
    if k > 20 or tuple(names) == clean_class_names(ADE20K_CLASSES):
        return viz.make_palette(k)
    import matplotlib

    tab = matplotlib.colormaps["tab20"].colors  # pairs (dark, light): the dark ten first
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return (np.asarray([tab[i] for i in order[:k]]) * 255).round().astype(np.uint8)


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def annotations(rgb: np.ndarray, labels: np.ndarray, names: Sequence[str], palette: np.ndarray,
                order: Sequence[int], opacity: float) -> tuple[np.ndarray, list, dict[str, str]]:
    """gr.AnnotatedImage value: the image and one mask (alpha = opacity) per class present, largest first.

    Classes beyond MAX_LEGEND are painted into the base image (same colours), so nothing is hidden.
    """
    alpha = float(np.clip(opacity, 0.0, 1.0))
    counts = np.bincount(labels[labels >= 0], minlength=len(names))
    present = [int(k) for k in order if counts[k] > 0]
    shown, rest = present[:MAX_LEGEND], present[MAX_LEGEND:]
    base = rgb
    if rest:
        mask = np.isin(labels, rest)
        base = rgb.copy()
        base[mask] = (rgb[mask] * (1 - alpha) + palette[labels[mask]] * alpha).round().astype(np.uint8)
    level = min(1.0, alpha / ANNOTATED_CSS_OPACITY)
    anns = [((labels == k).astype(np.float32) * level, names[k]) for k in shown]
    return base, anns, {names[k]: _hex(palette[k]) for k in shown}


def score_gallery(pred: Prediction, order: Sequence[int], cov: np.ndarray) -> list[tuple[Image.Image, str]]:
    """Heatmaps with colour bars of the MAX_GALLERY classes covering most of the image."""
    idx = [int(k) for k in order[:MAX_GALLERY]]
    maps = pred.maps[idx].float()
    h, w = maps.shape[1:]
    s = min(1.0, GALLERY_SIDE / max(h, w))  # drawn 300 px tall: no need to colour more pixels than that
    if s < 1.0:
        maps = F.interpolate(maps[None], size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                             align_corners=False)[0]
    names = [pred.names[k] for k in idx]
    items = viz.scoremap_gallery(maps, names)
    return [(img, f"{pred.names[k]} · {cov[k] * 100:.1f}%") for (img, _), k in zip(items, idx)]


class _Outputs:
    """A folder for the files offered for download; request folders older than an hour are removed."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="denseclip-app-"))
        atexit.register(shutil.rmtree, self.root, True)

    def new(self) -> Path:
        now = time.time()
        for old in self.root.iterdir():
            try:
                if now - old.stat().st_mtime > 3600:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        path = self.root / uuid.uuid4().hex
        path.mkdir()
        return path


def _stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem)[:60].strip("_")
    return stem or "image"


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
    outputs_dir = _Outputs()
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
                         + _shown(_weights_help(spec, e)).replace("\n\n", "<br>"))

    # ------------------------------------------------------------------------------------ the handler
    def segment(image, class_names, model=default_model, opacity=0.5, templates="auto",
                progress=gr.Progress()):
        """Segment `image` into `class_names` (comma/newline separated) with `model`.

        Returns the labelled overlay, the score-map gallery, the coverage chart, the label map (PNG), the
        per-class results (JSON) and a status line. Errors come back as gr.Error with a message.
        """
        t0 = time.perf_counter()
        notes: list[str] = []
        try:
            if image is None or (isinstance(image, str) and not image):
                raise UserError("Upload an image first (or click one of the examples).")
            if templates not in TEMPLATE_CHOICES:
                raise UserError(f"templates must be one of {', '.join(TEMPLATE_CHOICES)}, got {templates!r}")
            if not isinstance(opacity, (int, float)) or not 0.0 <= float(opacity) <= 1.0:
                raise UserError(f"opacity must be a number between 0 and 1, got {opacity!r}")
            spec = registry.resolve(model)
            names, name_notes = parse_class_names(class_names, allow_empty=spec.kind == "denseclip")
            notes += name_notes
            progress(0.05, desc="Reading the image")
            rgb, image_info = read_image(image, max_side, max_pixels)
            if image_info["downscaled"]:
                oh, ow = image_info["original_size"]
                notes.append(f"The image ({ow}x{oh}) was downscaled to {rgb.shape[1]}x{rgb.shape[0]}.")
            progress(0.15, desc=f"Loading {spec.label}")
            t_load = time.perf_counter()
            try:
                net = registry.get(spec)
            except denseclip.WeightsUnavailableError as e:
                raise UserError(f"{spec.label} is not available. {_weights_help(spec, e)}") from None
            except MemoryError:
                raise
            except Exception as e:  # a broken / incompatible / pickled checkpoint: say which and why
                log.warning("could not load %s:\n%s", spec.label, traceback.format_exc())
                raise UserError(registry.scrub(f"Could not load {spec.label}: {type(e).__name__}: {e}")) from None
            t_load = time.perf_counter() - t_load
            progress(0.3, desc="Computing pixel-text scores")
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
            progress(0.75, desc="Drawing")
            return _render(pred, rgb, image_info, spec, float(opacity), notes, t_load, t0)
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

    def _render(pred: Prediction, rgb, image_info, spec: ModelSpec, opacity, notes, t_load, t0):
        k = len(pred.names)
        labels = pred.labels
        valid = labels >= 0
        counts = np.bincount(labels[valid], minlength=k)
        cov = counts / labels.size
        peak = pred.maps.flatten(1).amax(1).numpy()
        order = np.lexsort((-peak, -cov))  # coverage first, then peak score
        palette = class_palette(pred.names)
        for n in notes:
            gr.Warning(_shown(n))

        base, anns, cmap = annotations(rgb, labels, pred.names, palette, order, opacity)
        overlay = gr.AnnotatedImage(value=(base, anns), color_map=cmap)
        with warnings.catch_warnings():  # names in scripts the default font lacks are drawn as boxes
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            gallery = score_gallery(pred, order, cov)
            short = [n if len(n) <= 28 else n[:27] + "…" for n in pred.names]
            fig = viz.coverage_figure(cov, short, palette, top=20)
            fig.suptitle(f"Pixels per class{' (top 20)' if (cov > 0).sum() > 20 else ''}", fontsize=11)
            coverage_img = viz.figure_to_image(fig)

        out = outputs_dir.new()
        stem = _stem(image_info["name"])
        if k <= 255:
            lab8 = np.where(valid, labels, 255).astype(np.uint8)
            png = viz.label_map_png(lab8, palette, ignore_index=255)
            encoding = "8-bit palette PNG: pixel value = index into `classes`, 255 = unlabelled"
        else:
            png = viz.labels_to_png16(np.where(valid, labels, 65535))
            encoding = "16-bit grayscale PNG: pixel value = index into `classes`, 65535 = unlabelled"
        png_path = out / f"{stem}_labels.png"
        png.save(png_path)
        seconds = time.perf_counter() - t0
        result = {
            "model": spec.label, "untrained": spec.untrained, "image": image_info,
            "map_kind": pred.map_kind, "seconds": round(seconds, 3),
            "timing": {"model_load": round(t_load, 4), **pred.timing}, "info": pred.info,
            "label_map": {"file": png_path.name, "encoding": encoding, "size": list(labels.shape)},
            "classes": [{"index": i, "name": n, "color": _hex(palette[i]), "pixels": int(counts[i]),
                         "fraction": round(float(cov[i]), 6), "max": round(float(peak[i]), 5),
                         "mean": round(float(pred.maps[i].mean()), 5)} for i, n in enumerate(pred.names)],
            "notes": notes,
        }
        json_path = out / f"{stem}_results.json"
        json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False), "utf-8")
        top = ", ".join(f"{pred.names[i]} {cov[i] * 100:.0f}%" for i in order[:3] if cov[i] > 0)
        untrained = " · ⚠️ untrained model: random output" if spec.untrained else ""
        status = (f"**{seconds:.2f} s** · {_shown(spec.label)}{untrained} · {k} classes · "
                  f"{labels.shape[1]}×{labels.shape[0]} px · largest: {_shown(top)}")
        if notes:
            status += "\n\n" + "\n".join(f"- {_shown(n)}" for n in notes)
        state = {"rgb": rgb, "labels": labels, "names": pred.names, "palette": palette, "order": order}
        return overlay, gallery, coverage_img, str(png_path), str(json_path), status, state

    def recolor(state, opacity):
        if not state:
            return gr.skip()
        base, anns, cmap = annotations(state["rgb"], state["labels"], state["names"], state["palette"],
                                       state["order"], float(opacity))
        return gr.AnnotatedImage(value=(base, anns), color_map=cmap)

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
