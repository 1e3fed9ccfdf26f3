"""The command lines the training and evaluation scripts share; each script adds its own flags.

    python -m train.train_seg --config C.yaml [--work-dir D] [--resume [PATH]] [--push-to-hub REPO] ...
    python -m train.eval_seg --checkpoint CKPT [--config C.yaml] [--out eval_metrics.json] ...
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from denseclip.checkpoints import write_json

from .config import load_run_config
from .distributed import distributed_session


def _parser(doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   allow_abbrev=False)


def train_parser(doc: str | None, sections: tuple[str, ...], validate_help: str) -> argparse.ArgumentParser:
    """--config, --work-dir, --resume, --push-to-hub, --skip-validate, --device, --no-progress, --stop-at."""
    p = _parser(doc)
    p.add_argument("--config", required=True,
                   help=f"YAML with {', '.join(s + ':' for s in sections)} sections")
    p.add_argument("--work-dir", help="checkpoints, logs, metrics (default: work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the latest checkpoint in the work dir (no value; an error if there is "
                        "none), from PATH, or `auto`: the latest if any, else start fresh")
    p.add_argument("--push-to-hub", metavar="REPO",
                   help="upload the final model + model card to this Hub repo")
    p.add_argument("--skip-validate", action="store_true", help=validate_help)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs only)")
    p.add_argument("--stop-at", type=int, help=argparse.SUPPRESS)  # debug: exit after this iteration
    return p


def work_dir_of(args: argparse.Namespace) -> Path:
    """--work-dir, or work_dirs/<config file name without .yaml>."""
    return Path(args.work_dir or Path("work_dirs") / Path(args.config).stem)


def eval_parser(doc: str | None, checkpoint_help: str, config_help: str,
                validate_help: str) -> argparse.ArgumentParser:
    """--checkpoint, --config, --max-images, --workers, --device, --out, --skip-validate."""
    p = _parser(doc)
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p.add_argument("--config", help=config_help)
    p.add_argument("--max-images", type=int, help="evaluate the first N images only (quick checks)")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", help="metrics JSON path (default: eval_metrics.json next to the checkpoint)")
    p.add_argument("--skip-validate", action="store_true", help=validate_help)
    return p


EVAL_METRICS = "eval_metrics.json"  # not metrics.json: a run's final/ folder keeps its training summary


def metrics_path(checkpoint: str, out: str | None) -> Path:
    """--out, or eval_metrics.json in the checkpoint folder (beside a checkpoint file; here for a Hub id)."""
    if out:
        return Path(out)
    ckpt = Path(checkpoint)
    return (ckpt if ckpt.is_dir() else ckpt.parent if ckpt.exists() else Path(".")) / EVAL_METRICS


def evaluate_main(parser: argparse.ArgumentParser, sections: tuple[str, ...],
                  evaluate: Callable[..., tuple[dict, str]], argv: list[str] | None = None) -> dict:
    """An evaluation script: its command line (+ `--section.key value` overrides of --config), a torchrun
    session, evaluate(cfg, args, env) -> (metrics, text to print on rank 0), the JSON at metrics_path."""
    args, overrides = parser.parse_known_args(argv)
    cfg = load_run_config(args.config, overrides, sections)
    with distributed_session(args.device) as env:
        metrics, text = evaluate(cfg, args, env)
        if env.is_main:
            metrics["checkpoint"] = str(args.checkpoint)
            path = metrics_path(args.checkpoint, args.out)
            write_json(path, metrics)
            print(f"{text}\nmetrics written to {path}", flush=True)
        return metrics
