"""Weights: open_clip pretrained CLIP, our safetensors checkpoints, the Hub, the authors' .pth files.

- `create_clip`: an open_clip CLIP model by name + tag (hub cache), local file, or explicit config.
  When the Hub is unreachable it fails within seconds and says how to point at a local file.
- `save_checkpoint` / `load_checkpoint`: safetensors with the config as JSON metadata (no pickle);
  `load_checkpoint` also takes a Hub repo id or the authors' released mmcv `.pth` checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import zipfile
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from .config import DenseCLIPConfig

WEIGHTS_DIR_ENV = "DENSECLIP_WEIGHTS_DIR"  # folder searched for CLIP weight files before the Hub
CHECKPOINT_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found locally nor downloaded."""


@lru_cache(maxsize=4)
def _endpoint_reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers, decided within `timeout` seconds (cached per process).

    HF_HUB_OFFLINE=1 means no. The answer is cached so a UI never waits twice.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return _endpoint_reachable(url.hostname or "huggingface.co", url.port or 443, timeout)


def _offline_help(what: str) -> str:
    return (f"{what} could not be downloaded: the Hugging Face Hub is unreachable (or HF_HUB_OFFLINE=1) "
            f"and it is not in the local cache. Either pass a local file (pretrained='/path/to/RN50.pt' "
            f"or a .safetensors/.bin open_clip checkpoint), put the file in the folder named by the "
            f"{WEIGHTS_DIR_ENV} environment variable (as '<model>.pt' or '<model>-<tag>.safetensors'), "
            f"or use pretrained=None for random weights (tests, UI checks).")


def _find_in_weights_dir(model_name: str, tag: str) -> str | None:
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return None
    stems = [f"{model_name}-{tag}", f"{model_name}_{tag}", model_name, model_name.replace("-", "/")]
    for stem in stems:
        for ext in (".safetensors", ".bin", ".pt", ".pth"):
            path = Path(folder) / f"{stem}{ext}"
            if path.is_file():
                return str(path)
    return None


def _cached_hub_file(model_name: str, tag: str) -> str | None:
    """The open_clip weights for (model, tag) if already in the Hugging Face cache."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    repo_id, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return found
    return None


def load_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict of a CLIP checkpoint file: safetensors, torch (weights_only) or OpenAI TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            is_jit = any(n.endswith("constants.pkl") for n in z.namelist())
        if is_jit:  # OpenAI's RN50.pt etc. are TorchScript archives (no pickle of Python objects)
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
            return {k: v.float() for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        ckpt = ckpt["state_dict"]
    return {k[7:] if k.startswith("module.") else k: v for k, v in ckpt.items()}


def create_clip(model_name: str, pretrained: str | None = None, arch: dict | None = None,
                quick_gelu: bool = True) -> nn.Module:
    """An open_clip CLIP model (fp32, eval mode, on CPU).

    model_name: open_clip name ("RN50", "ViT-B-16", ...); arch: an explicit open_clip config instead
    (embed_dim, vision_cfg, text_cfg) for tiny models. pretrained: None (random weights), an open_clip
    tag ("openai") or a local checkpoint file. Tags are served from DENSECLIP_WEIGHTS_DIR, the Hub cache,
    or the Hub; when none has them a WeightsUnavailableError explains what to do, within seconds.
    """
    import open_clip

    if arch is not None:
        model = open_clip.CLIP(**arch, quick_gelu=quick_gelu)
    else:
        if open_clip.get_model_config(model_name) is None:
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        # open_clip logs "initialized randomly" here; when weights follow below that is misleading
        level = logging.getLogger().level
        if pretrained:
            logging.getLogger().setLevel(logging.ERROR)
        try:
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
        finally:
            logging.getLogger().setLevel(level)
    if pretrained:
        path = pretrained if Path(pretrained).is_file() else None
        if path is None and (Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors") or os.sep in pretrained):
            raise FileNotFoundError(f"CLIP weights file not found: {pretrained}")
        if path is None and arch is not None:
            raise ValueError("an explicit clip_arch takes a local weights file, not a tag")
        path = path or _find_in_weights_dir(model_name, pretrained)
        if path is None:
            if not open_clip.get_pretrained_cfg(model_name, pretrained):
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                raise ValueError(f"no pretrained tag {pretrained!r} for {model_name}; available: {tags}")
            path = _cached_hub_file(model_name, pretrained)
        if path is None:
            if not hub_reachable():
                raise WeightsUnavailableError(_offline_help(f"CLIP weights {model_name}/{pretrained}"))
            try:
                return open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=quick_gelu).eval()
            except Exception as e:  # network trouble in the middle of a download
                raise WeightsUnavailableError(f"{_offline_help(f'CLIP weights {model_name}/{pretrained}')} ({e})") from e
        sd = load_clip_state_dict(path)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ValueError(f"weights in {path} do not fit open_clip {model_name}: {e}") from e
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Our checkpoints: safetensors + config JSON (in the file's metadata and, for folders, config.json).
# ---------------------------------------------------------------------------------------------

def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Write `model` (a DenseCLIP) to `path` (.safetensors file, or a folder -> model.safetensors +
    config.json). Written to a temporary file first and renamed, so a crash never leaves half a file."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(model.cfg.to_dict(), indent=2, ensure_ascii=False), "utf-8")
        path = path / CHECKPOINT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "denseclip_config": model.cfg.to_json()}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_stored_config(path: Path) -> dict | None:
    """The config dict stored in a checkpoint's metadata, or in the config.json beside it (None if neither)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get("denseclip_config")
    if text is None and (path.parent / CONFIG_NAME).is_file():
        text = (path.parent / CONFIG_NAME).read_text("utf-8")
    return json.loads(text) if text else None


def resolve_checkpoint(path_or_repo: str | Path) -> Path:
    """A checkpoint file: the path itself, `model.safetensors` in a folder, or a Hub repo's (downloaded)."""
    path = Path(path_or_repo)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CHECKPOINT_NAME} in folder {path.parent}")
        return path
    if path.exists():
        return path
    if path.suffix in (".pth", ".pt", ".safetensors", ".ckpt") or str(path_or_repo).count("/") != 1:
        raise FileNotFoundError(f"checkpoint not found: {path_or_repo}")
    return download_checkpoint(str(path_or_repo))


def download_checkpoint(repo_id: str, revision: str | None = None) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, CHECKPOINT_NAME, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if not hub_reachable():
        raise WeightsUnavailableError(
            f"checkpoint repo {repo_id!r} is not a local file or folder and the Hugging Face Hub is unreachable; "
            "download model.safetensors on a connected machine and pass its path")
    try:
        return Path(hf_hub_download(repo_id, CHECKPOINT_NAME, revision=revision))
    except Exception as e:
        raise WeightsUnavailableError(f"could not download {CHECKPOINT_NAME} from Hub repo {repo_id!r}: {e}") from e


def load_checkpoint(path_or_repo: str | Path, preset: str | DenseCLIPConfig | None = None,
                    class_names=None, device: str | torch.device = "cpu"):
    """Load a DenseCLIP model in eval mode from:

    - our `.safetensors` file or a folder with `model.safetensors` (+ `config.json`) -- a detection
      checkpoint (its config has a `detector` field) comes back as a DenseCLIPDetector,
    - a Hugging Face Hub repo id holding those files ("user/denseclip-rn50-ade20k"),
    - the authors' released mmcv checkpoints (`.pth`, loaded with weights_only=True; the architecture
      is read off the tensors, class names from meta["CLASSES"]).
    `preset` gives the config when a file carries none; `class_names` overrides the stored names.
    """
    from safetensors.torch import load_file

    from .segmentor import DenseCLIP

    path = resolve_checkpoint(path_or_repo)
    if path.suffix == ".safetensors":
        stored = read_stored_config(path)
        if isinstance(stored, dict) and "detector" in stored and preset is None:  # a detection checkpoint
            from .detection import load_detector

            if class_names is not None:
                raise ValueError("class_names cannot be changed when loading a detector")
            return load_detector(path, device=device)
        cfg = _as_config(preset) if preset is not None else \
            DenseCLIPConfig.from_dict(stored) if stored is not None else None
        if cfg is None:
            raise ValueError(f"{path} carries no DenseCLIP config; pass preset='denseclip-rn50-ade20k' (or a config)")
        state = load_file(str(path))
    else:
        from .official import config_from_official, read_official_checkpoint

        state, meta = read_official_checkpoint(path)
        if class_names is not None:  # before inferring the config: a checkpoint may carry no names
            meta = {**meta, "CLASSES": tuple(class_names)}
        cfg = config_from_official(state, meta, base=_as_config(preset) if preset is not None else None)
    if class_names is not None:
        cfg = cfg.replace(class_names=tuple(class_names))
    model = DenseCLIP(cfg, clip_for(cfg))
    load_state_checked(model, state, str(path))
    return model.to(device).eval()


def _as_config(preset: str | DenseCLIPConfig) -> DenseCLIPConfig:
    from .config import get_preset

    return get_preset(preset) if isinstance(preset, str) else preset


def clip_for(cfg: DenseCLIPConfig, pretrained: str | None = None) -> nn.Module | None:
    """The open_clip model a DenseCLIP config needs (None when it uses neither CLIP tower): with the
    `pretrained` weights, or a random skeleton whose tensors a checkpoint will overwrite."""
    if cfg.backbone != "clip" and not cfg.use_text:
        return None
    return create_clip(cfg.clip_model, pretrained, cfg.clip_arch, cfg.quick_gelu)


# Tensors of the authors' checkpoints that our model has no use for (mmseg's unused identity-head classifier).
IGNORED_PREFIXES = ("identity_head.", "auxiliary_head.")
# Embedding-path tensors a CLIP+FPN baseline checkpoint may lack (their baselines build no attnpool / proj).
UNUSED_WITHOUT_TEXT = ("backbone.attnpool.", "backbone.ln_post.", "backbone.proj")


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    unexpected = sorted(set(state) - set(own))
    optional = () if getattr(model.cfg, "use_text", True) else UNUSED_WITHOUT_TEXT
    missing = sorted(k for k in set(own) - set(state)
                     if not k.endswith("num_batches_tracked") and not k.startswith(optional))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    if unexpected or missing or wrong:
        raise ValueError(f"checkpoint {source} does not match the model ({model.cfg.name}): "
                         f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                         f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, "
                         f"shape mismatches {wrong[:8]}")
    model.load_state_dict(state, strict=False)
    if hasattr(model, "clear_text_cache"):
        model.clear_text_cache()
