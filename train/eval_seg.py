"""Evaluate a DenseCLIP checkpoint: mIoU / mAcc / aAcc and per-class IoU, written to eval_metrics.json.
From the repository root:

    python -m train.eval_seg --checkpoint work_dirs/rn50/final \
        --config train/configs/denseclip_rn50_ade20k.yaml
    python -m train.eval_seg --checkpoint denseclip_fpn_res50.pth --config ... --aug     # multi-scale + flip
    torchrun --nproc_per_node 8 -m train.eval_seg --checkpoint ... --config ...       # images split over GPUs

The test pipeline comes from the checkpoint's config (`model.test`: slide 512/341 for the ADE20K
presets); --mode/--crop/--stride/--scales/--flip change it, --aug is the authors' multi-scale + flip
(ratios 0.5, 0.75, 1.0, 1.25, 1.5, 1.75). The data comes from the config's `data:` section
(`--data.root PATH` and other dotted overrides work as in train_seg).
"""

from __future__ import annotations

if not __package__:  # run as a file: the package's imports cannot work
    raise SystemExit("run it as a module from the repository root: python -m train.eval_seg --help")

import torch

import denseclip
from denseclip.metrics import format_table

from .engine import eval_parser, evaluate_main
from .seg_data import DataConfig, build_dataset

AUG_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def test_config(base: denseclip.TestConfig, args) -> denseclip.TestConfig:
    """The checkpoint's test pipeline with the command line's changes."""
    changes = {k: getattr(args, k) for k in ("mode", "crop", "stride", "short_side", "max_long_side")
               if getattr(args, k) is not None}
    if args.aug:
        changes.update(scales=AUG_SCALES, flip=True)
    if args.scales:
        changes["scales"] = tuple(args.scales)
    if args.flip:
        changes["flip"] = True
    return base.replace(**changes)


def parser():
    p = eval_parser(__doc__, "our .safetensors / checkpoint folder, a Hub repo id, or the authors' .pth",
                    "YAML whose data: section names the dataset (a run's config.yaml works)",
                    "do not check the dataset files first")
    p.add_argument("--split", help="dataset split (default: the config's val split)")
    p.add_argument("--mode", choices=("whole", "slide"))
    p.add_argument("--crop", type=int)
    p.add_argument("--stride", type=int)
    p.add_argument("--short-side", type=int)
    p.add_argument("--max-long-side", type=int)
    p.add_argument("--scales", type=float, nargs="+",
                   help="multi-scale ratios, e.g. 0.5 0.75 1.0 1.25 1.5 1.75")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped predictions")
    p.add_argument("--aug", action="store_true", help="the authors' multi-scale (0.5..1.75) + flip test")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    return p


def evaluate(cfg: dict, args, env) -> tuple[dict, str]:
    data = DataConfig.from_dict(cfg["data"], "data")
    split = args.split or data.splits()[1]
    if split is None:
        raise ValueError("no validation split: pass --split or set data.val_split")
    dataset = build_dataset(data, split, seed=cfg["train"].seed)
    if env.is_main and not args.skip_validate:
        dataset.validate("fast" if data.validate == "none" else data.validate)
    model = denseclip.load_checkpoint(args.checkpoint, device=env.device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    results = denseclip.evaluate(model, dataset, test_config(model.cfg.test, args),
                                 shard=(env.rank, env.world_size), amp_dtype=amp, max_images=args.max_images,
                                 workers=args.workers)
    results.update(dataset=dataset.name, split=split)
    return results, format_table(results)


def main(argv: list[str] | None = None) -> dict:
    return evaluate_main(parser(), ("model", "data", "train"), evaluate, argv)


if __name__ == "__main__":
    main()
