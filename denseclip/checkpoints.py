"""Our checkpoint format: safetensors weights with the model's config (no pickle), locally or on the Hub.

    save_checkpoint(model, "run/final")          # model.safetensors (+ the config as metadata), config.json
    save_checkpoint(model, "model.safetensors")  # one self-contained file
    model.save_pretrained("run/final"), model.push_to_hub("user/repo")   # + a model card (huggingface_hub)

`checkpoint_file` finds the weights of a file, a folder or a Hub repo id; `load_model` and `build` make
the model a checkpoint or a config describes, for both tasks (`load_checkpoint` / `load_detector`,
`build_model` / `build_detector`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData, ModelHubMixin
from torch import nn

from .clip import clip_for
from .config import C, Config, DetectionConfig, ModelConfig, config_from_dict, resolve
from .hub import hub_file
from .official import authors_name, load_official, load_official_detector

CHECKPOINT_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

OFFICIAL_SUFFIXES = (".pth", ".pt")  # the authors' mmcv checkpoints


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Write to the yielded temporary path; it replaces `path` only if the block succeeds.

        with atomic_path("metrics.json") as tmp:
            tmp.write_text(text)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists() and tmp.is_file():
            tmp.unlink()


def write_json(path: str | Path, data) -> Path:
    """Strict JSON (NaN and infinities written as null: JSON has none), written atomically."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return [clean(x) for x in v] if isinstance(v, (list, tuple)) else v

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean(data), indent=2, ensure_ascii=False, allow_nan=False), "utf-8")
    return Path(path)


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Write `model` (anything with a `cfg`) to `path`: a `.safetensors` file, or a folder holding
    model.safetensors + config.json. Written atomically: a crash never leaves half a file."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        write_json(path / CONFIG_NAME, model.cfg.to_dict())
        path = path / CHECKPOINT_NAME
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "denseclip_config": model.cfg.to_json()}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_stored_config(path: Path) -> dict | None:
    """The config dict stored in a checkpoint's metadata or in the config.json beside it (None if neither)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get("denseclip_config")
    if text is None and (path.parent / CONFIG_NAME).is_file():
        text = (path.parent / CONFIG_NAME).read_text("utf-8")
    return json.loads(text) if text else None


def checkpoint_file(path_or_repo: str | Path, revision: str | None = None) -> Path:
    """A checkpoint file: the path itself, model.safetensors in a folder, or a Hub repo's (downloaded)."""
    path = Path(path_or_repo)
    if path.is_dir():
        if not (path / CHECKPOINT_NAME).is_file():
            raise FileNotFoundError(f"no {CHECKPOINT_NAME} in folder {path}")
        return path / CHECKPOINT_NAME
    if path.exists():
        return path
    if path.suffix in (".pth", ".pt", ".safetensors", ".ckpt") or str(path_or_repo).count("/") != 1:
        raise FileNotFoundError(f"checkpoint not found: {path_or_repo}")
    return hub_file(str(path_or_repo), CHECKPOINT_NAME, revision, what=f"the checkpoint {path_or_repo!r}")


def read_checkpoint(path_or_repo: str | Path, base: Config | None, class_names: Sequence[str] | None,
                    kind: type[Config]) -> tuple[Path, Config, dict[str, torch.Tensor]]:
    """(file, config, state dict in our names) of our `.safetensors` checkpoint (config from `base`, else the
    stored one) or of the authors' `.pth` (`denseclip.official`), for a `kind` config; `class_names` replace
    the stored names."""
    path = checkpoint_file(path_or_repo)
    names = tuple(class_names) if class_names is not None else None
    detection = issubclass(kind, DetectionConfig)
    if path.suffix in OFFICIAL_SUFFIXES:
        cfg, state = (load_official_detector if detection else load_official)(path, base, names)
    else:
        from safetensors.torch import load_file

        stored = read_stored_config(path)
        if base is None and stored is None:
            example = "denseclip-retinanet-rn50-coco" if detection else "denseclip-rn50-ade20k"
            raise ValueError(f"{path} carries no config; pass config={example!r} (or a {kind.__name__})")
        cfg = base or config_from_dict(stored)
        if not isinstance(cfg, kind):
            what, loader = ("segmentation", "load_checkpoint") if detection else \
                ("detection", "load_detector")
            raise ValueError(f"{path} holds a {what} checkpoint ({type(cfg).__name__}): load it with "
                             f"denseclip.{loader}")
        state = load_file(str(path))
    if names is not None:
        cfg = cfg.replace(class_names=names)
    return path, cfg, state


def build(cfg: ModelConfig, assemble: Callable[[ModelConfig, nn.Module | None], nn.Module],
          pretrained: bool | str | None = True) -> nn.Module:
    """`assemble(cfg, clip_model)` around the config's CLIP, in train mode on the CPU. pretrained=True loads
    its `clip_pretrained` weights, False/None random ones; a string is an open_clip tag or a weights file."""
    tag = cfg.clip_pretrained if pretrained is True else (pretrained or None)
    return assemble(cfg, clip_for(cfg, tag)).train()


def load_model(path_or_repo: str | Path, kind: type[C], assemble: Callable[[C, nn.Module | None], nn.Module],
               config: str | C | None = None, class_names: Sequence[str] | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """The model of a checkpoint (see `read_checkpoint`; `config`: a preset name or a `kind` config that
    replaces the stored one), every tensor checked, in eval mode on `device`."""
    base = resolve(config, kind) if config is not None else None
    path, cfg, state = read_checkpoint(path_or_repo, base, class_names, kind)
    model = assemble(cfg, clip_for(cfg))
    load_state_checked(model, state, str(path), authors_name if path.suffix in OFFICIAL_SUFFIXES else str)
    return model.to(device).eval()


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                       name: Callable[[str], str] = str) -> None:
    """Load every tensor of `state` into `model`; any missing, unexpected or misshapen tensor is an error
    that names them (as `name(key)` calls them: a foreign file's own key names)."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(name(k) for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = [name(k) for k in unexpected]
    wrong = [f"{name(k)}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    if unexpected or missing or wrong:
        def some(keys: list[str]) -> str:
            return f"{keys[:8]}{' ...' if len(keys) > 8 else ''}"

        raise ValueError(f"checkpoint {source} does not match the model ({model.cfg.name}): "
                         f"missing {some(missing)}, unexpected {some(unexpected)}, "
                         f"shape mismatches {some(wrong)}")
    model.load_state_dict(state, strict=False)


class HubMixin(ModelHubMixin, library_name="denseclip", license="apache-2.0",
               paper_url="https://arxiv.org/abs/2112.01518",
               repo_url="https://github.com/raoyongming/DenseCLIP"):
    """huggingface_hub's save_pretrained / from_pretrained / push_to_hub in our checkpoint format, with a
    model card. A subclass says how to load a checkpoint file (`load_file`) and what its card says."""

    load_file: Callable[[Path], nn.Module]  # a classmethod in each model class

    def _save_pretrained(self, save_directory: Path) -> None:
        save_checkpoint(self, save_directory)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, **hub_kwargs) -> nn.Module:
        return cls.load_file(checkpoint_file(model_id, revision))

    def card_text(self, metrics: dict | None = None, repo_id: str = "user/repo") -> str:
        return f"# {self.cfg.name}\n"

    def generate_model_card(self, metrics: dict | None = None, repo_id: str = "user/repo",
                            training: dict | None = None, **kwargs) -> ModelCard:
        """README.md for the Hub: what the model is, how to load it, its validation numbers and recipe
        (`model.push_to_hub(repo, model_card_kwargs={"metrics": ..., "repo_id": repo, "training": ...})`)."""
        info = self._hub_mixin_info.model_card_data
        data = ModelCardData(library_name=info.library_name, license=info.license, tags=info.tags)
        text = self.card_text(metrics, repo_id)
        if training:
            text += "\n## Training\n\n" + ", ".join(f"{k}={v}" for k, v in training.items()) + "\n"
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")
