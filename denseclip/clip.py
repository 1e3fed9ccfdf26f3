"""open_clip CLIP models with pretrained weights from a local file, a weights folder, or the Hub.

    clip = create_clip("RN50", "openai")          # OpenAI's RN50; offline, fails within seconds and says how
    clip = create_clip("RN50", "/path/RN50.pt")   # OpenAI's TorchScript file, or a .safetensors / .bin
    clip = create_clip("tiny", None, arch={...})  # random weights from an explicit open_clip config
"""

from __future__ import annotations

import copy
import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from .config import DenseCLIPConfig, ModelConfig
from .hub import WeightsUnavailableError, first_hub_file

WEIGHTS_DIR_ENV = "DENSECLIP_WEIGHTS_DIR"  # folder searched for CLIP weight files before the Hub
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _offline_help(model_name: str, tag: str, reason: str) -> str:
    return (f"CLIP weights {model_name}/{tag} are not on this machine: {reason}. Either pass a local file "
            f"(pretrained='/path/to/{model_name}.pt', OpenAI's file or an open_clip .safetensors/.bin), "
            f"put it in the folder named by the {WEIGHTS_DIR_ENV} environment variable (as "
            f"'{model_name}.pt' or '{model_name}-{tag}.safetensors'), or use pretrained=None for random "
            "weights (tests, UI checks).")


def weights_dir_file(model_name: str, tag: str) -> str | None:
    """The weights file of (model, tag) in the folder named by DENSECLIP_WEIGHTS_DIR, or None (no Hub)."""
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return None
    for stem in (f"{model_name}-{tag}", f"{model_name}_{tag}", model_name, model_name.replace("-", "/")):
        for ext in WEIGHT_SUFFIXES:
            if (Path(folder) / f"{stem}{ext}").is_file():
                return str(Path(folder) / f"{stem}{ext}")
    return None


def hub_weights(model_name: str, tag: str) -> tuple[str, list[str]]:
    """(Hub repo, weight files to try in order) of open_clip's (model, tag): its `hf_hub` entry, "org/repo/"
    (open_clip's safetensors file first) or "org/repo/file"."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        raise ValueError(f"no pretrained tag {tag!r} for {model_name}; available: "
                         f"{open_clip.list_pretrained_tags_by_model(model_name)}")
    hub = cfg.get("hf_hub", "").rstrip("/")
    if not hub:
        raise WeightsUnavailableError(_offline_help(model_name, tag, "its open_clip entry has no Hub repo"))
    parts = hub.split("/")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    return repo_id, [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]


def fast_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """The precision `device` computes fastest at CLIP's accuracy: bfloat16 on CPUs with AVX512-BF16 or AMX
    and on GPUs that have it, float16 on older GPUs, float32 elsewhere (float16 on a CPU is emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        if caps.get("avx512_bf16") or caps.get("amx_bf16"):
            return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """"auto" (the device's `fast_dtype`), a name, a torch dtype or None (float32), checked for the device."""
    if dtype == "auto":
        dtype = fast_dtype(device)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype or torch.float32
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        raise ValueError("float16 on a CPU is emulated and very slow: use torch.bfloat16 (fast on CPUs with "
                         "AVX512-BF16 or AMX) or float32")
    return dtype


def clip_weights_file(model_name: str, tag: str) -> Path:
    """The weights file of an open_clip (model, tag): DENSECLIP_WEIGHTS_DIR, then the Hub (or its cache)."""

    found = weights_dir_file(model_name, tag)
    if found:
        return Path(found)
    repo_id, names = hub_weights(model_name, tag)
    try:
        return first_hub_file(repo_id, names, what=f"CLIP weights {model_name}/{tag}")
    except (FileNotFoundError, WeightsUnavailableError) as e:
        raise WeightsUnavailableError(_offline_help(model_name, tag, str(e))) from e


def load_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict of a CLIP checkpoint file: OpenAI's TorchScript archive, else open_clip's own reader
    (safetensors, or torch with weights_only, "state_dict" and "module." unwrapped)."""
    from open_clip.factory import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights file not found: {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            is_jit = any(n.endswith("constants.pkl") for n in z.namelist())
        if is_jit:  # OpenAI's RN50.pt etc. (torch.load refuses TorchScript with weights_only)
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
            skip = ("input_resolution", "context_length", "vocab_size")
            return {k: v.float() for k, v in sd.items() if k not in skip}
    return load_state_dict(str(path))


def quick_gelu_for(model_name: str, arch: dict, pretrained: str | None) -> bool:
    """Whether a CLIP uses QuickGELU, as open_clip decides it: the model config's own `quick_gelu` (the
    "-quickgelu" models), else the pretrained tag's entry (OpenAI's weights: True; most LAION ones: none,
    so False); weights from a file or random weights: True, OpenAI's activation."""
    import open_clip

    if "quick_gelu" in arch:
        return bool(arch["quick_gelu"])
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    if tag_cfg:
        return bool(tag_cfg.get("quick_gelu", False))
    return True


def create_clip(model_name: str, pretrained: str | None = None, arch: dict | None = None,
                quick_gelu: bool | None = None) -> nn.Module:
    """An open_clip CLIP model (fp32, eval mode, on CPU): the one place a CLIP is built.

    model_name: open_clip name ("RN50", "ViT-B-16", ...); arch: an explicit open_clip config instead
    (embed_dim, vision_cfg, text_cfg) for tiny models. pretrained: None (random weights), an open_clip
    tag ("openai") or a local checkpoint file. Tags are served from DENSECLIP_WEIGHTS_DIR, the Hub cache,
    or the Hub; when none has them a WeightsUnavailableError explains what to do, within seconds.
    quick_gelu: None decides it as open_clip does (`quick_gelu_for`).
    """
    import open_clip

    if arch is None:
        arch = open_clip.get_model_config(model_name)
        if arch is None:
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        if arch.get("custom_text") or "hf_model_name" in arch.get("text_cfg", {}):
            raise ValueError(f"{model_name} has a custom text tower; DenseCLIP needs CLIP's own "
                             "(RN50, ViT-B-16, ...)")
    path = tag = None
    if pretrained:  # find the weights before building: a missing file fails in seconds, not after a build
        path = Path(pretrained)
        if not path.is_file():
            if path.suffix in WEIGHT_SUFFIXES or os.sep in pretrained:
                raise FileNotFoundError(f"CLIP weights file not found: {pretrained}")
            tag, path = pretrained, clip_weights_file(model_name, pretrained)
    if quick_gelu is None:
        quick_gelu = quick_gelu_for(model_name, arch, tag)
    arch = {k: v for k, v in copy.deepcopy(arch).items() if k not in ("custom_text", "quick_gelu")}
    model = open_clip.CLIP(**arch, quick_gelu=quick_gelu)
    if path is not None:
        try:
            model.load_state_dict(load_clip_state_dict(path), strict=True)
        except RuntimeError as e:
            raise ValueError(f"weights in {path} do not fit open_clip {model_name}: {e}") from e
    return model.eval()


def clip_for(cfg: ModelConfig, pretrained: str | None = None) -> nn.Module | None:
    """The open_clip model a config needs (None when it uses neither CLIP tower): with the `pretrained`
    weights, or a random skeleton whose tensors a checkpoint will overwrite."""
    if isinstance(cfg, DenseCLIPConfig) and cfg.backbone != "clip" and cfg.prompt is None:  # a timm encoder
        return None
    return create_clip(cfg.clip_model, pretrained, cfg.clip_arch, cfg.quick_gelu)
