"""The app's configuration: one object for command-line flags, environment variables and defaults.

A Hugging Face Space runs plain `python app.py`, so every flag has an environment variable (a Space's
"Variables" settings); a flag given on the command line wins over its variable.

    config = AppConfig.parse(sys.argv[1:])          # flags, then DENSECLIP_* variables, then defaults
    config = AppConfig(tiny=True)                   # in tests and scripts
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

SPACE_PORT = 7860  # what a Space's proxy expects


def _option(default, env: str, help: str, flag: str | None = None, **argparse_kwargs):
    """A config field with its variable, its help, and (optional) argparse settings."""
    meta = {"env": env, "help": help, "flag": flag, "argparse": argparse_kwargs}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AppConfig:
    """What the operator decides. Visitors only choose among what this allows."""

    host: str | None = _option(None, "GRADIO_SERVER_NAME",
                               "address to listen on (default 127.0.0.1; 0.0.0.0 on a Space)")
    port: int | None = _option(None, "GRADIO_SERVER_PORT", "port (default 7860)")
    tiny: bool = _option(False, "DENSECLIP_TINY",
                         "also offer tiny untrained models, for interface checks offline (results are noise)")
    checkpoints: tuple[str, ...] = _option(
        (), "DENSECLIP_CHECKPOINTS", "DenseCLIP checkpoints to offer (our .safetensors / folder, a Hub repo "
        "id, the authors' .pth); repeatable / comma separated; the first is the default model",
        flag="--checkpoint")
    checkpoint_dir: str | None = _option(None, "DENSECLIP_CHECKPOINT_DIR",
                                         "folder whose checkpoints visitors may pick by name")
    detectors: tuple[str, ...] = _option(
        (), "DENSECLIP_DETECTORS", "DenseCLIP detectors for the Detect tab (the authors' mmdetection .pth, "
        "our saved folder / file, a Hub repo id); repeatable / comma separated", flag="--detector")
    hub_allow: tuple[str, ...] = _option(
        (), "DENSECLIP_HUB_ALLOW", "Hub repos ('user/repo') or owners ('user/') whose checkpoints visitors "
        "may name; comma separated (none: visitors cannot load Hub checkpoints)")
    hub_max_mb: float = _option(2000.0, "DENSECLIP_HUB_MAX_MB",
                                "largest Hub checkpoint visitors may load, MB")
    max_side: int = _option(1024, "DENSECLIP_MAX_SIDE", "long side images are decoded to, pixels")
    max_pixels: int = _option(50_000_000, "DENSECLIP_MAX_PIXELS",
                              "largest non-JPEG image accepted, pixels (read from the header)")
    max_file_size: str = _option("30mb", "DENSECLIP_MAX_FILE_SIZE", "upload limit, e.g. 30mb")
    device: str | None = _option(None, "DENSECLIP_DEVICE", "cpu, cuda, ... (default: cuda if present)")
    dtype: str = _option("auto", "DENSECLIP_DTYPE",
                         "precision of the CLIP models: auto (the fastest this device computes well: "
                         "bfloat16 on CPUs with AVX512-BF16 or AMX), float32 or bfloat16",
                         choices=("auto", "float32", "bfloat16", "float16"))
    output_mb: float = _option(500.0, "DENSECLIP_OUTPUT_MB",
                               "disk space for result files; the oldest results are removed beyond it")

    @classmethod
    def parse(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
              description: str | None = None) -> AppConfig:
        """Flags from `argv`, else the variables of `environ` (default os.environ), else the defaults.
        A malformed variable exits like a malformed flag, naming the variable."""
        environ = os.environ if environ is None else environ
        parser = argparse.ArgumentParser(description=description)
        for f in fields(cls):
            meta, flag = f.metadata, f.metadata["flag"] or "--" + f.name.replace("_", "-")
            kwargs = {"dest": f.name, "default": None, "help": f"{meta['help']} [{meta['env']}]",
                      **meta["argparse"]}
            if f.type == "bool":
                kwargs.update(action="store_true")
            elif "tuple" in f.type:
                kwargs.update(action="append", metavar="VALUE")
            else:
                kwargs.update(type=_caster(f.type), metavar=kwargs.get("metavar", f.name.upper()))
            parser.add_argument(flag, **kwargs)
        args = vars(parser.parse_args(argv))
        values = {}
        for f in fields(cls):
            value = args[f.name]
            if value is None or value is False:
                raw = environ.get(f.metadata["env"])
                if raw is None or not raw.strip():
                    continue
                try:
                    value = _from_env(f.type, raw, f.metadata["argparse"].get("choices"))
                except ValueError as e:
                    parser.error(f"{f.metadata['env']}={raw!r}: {e}")
            elif "tuple" in f.type:
                value = tuple(item.strip() for v in value for item in v.split(",") if item.strip())
            values[f.name] = value
        return cls(**values)

    def replace(self, **changes) -> AppConfig:
        return replace(self, **changes)

    def bind_address(self, environ: Mapping[str, str] | None = None) -> tuple[str | None, int | None]:
        """On a Hugging Face Space (SPACE_ID set) the app listens on 0.0.0.0:7860 unless told otherwise."""
        environ = os.environ if environ is None else environ
        if environ.get("SPACE_ID"):
            return self.host or "0.0.0.0", self.port or SPACE_PORT
        return self.host, self.port

    def variables(self) -> dict[str, str]:
        """Each field's environment variable -> its help (for the README and the log)."""
        return {f.metadata["env"]: f.metadata["help"] for f in fields(self)}


def _caster(type_name: str):
    return {"int | None": int, "int": int, "float": float}.get(type_name, str)


def _from_env(type_name: str, raw: str, choices=None):
    raw = raw.strip()
    if type_name == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("use 1 / true or 0 / false")
    if "tuple" in type_name:
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    value = _caster(type_name)(raw)
    if choices and value not in choices:
        raise ValueError(f"choose from {', '.join(choices)}")
    return value
