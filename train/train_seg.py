"""Train a DenseCLIP (or CLIP + FPN) segmentor from a YAML config.

    python -m train.train_seg --config train/configs/denseclip_rn50_ade20k.yaml --work-dir work_dirs/rn50
    torchrun --nproc_per_node 8 -m train.train_seg --config ... --work-dir ...       # 8 GPUs x 4 = batch 32
    python -m train.train_seg --config ... --train.max_iters 100 --model.prompt.num_contexts 4   # dotted overrides
    python -m train.train_seg --config ... --work-dir work_dirs/rn50 --resume         # continue a killed run

Any `--section.key value` not listed below overrides the YAML. On fewer GPUs the same total batch
(train.total_batch) is reached by gradient accumulation, computed from the per-GPU batch and the
world size. Everything that can fail (dataset files, weights, the Hub) is checked before iteration 0.
"""

from __future__ import annotations

if not __package__:  # run as a file: the package's imports cannot work
    raise SystemExit("run it as a module from the repository root: python -m train.train_seg --help")

import math
from functools import partial
from pathlib import Path

import torch

import denseclip
from denseclip.config import DenseCLIPConfig
from denseclip.evaluation import evaluate

from .engine import (
    accumulation_steps,
    broadcast_buffers,
    broadcast_error,
    build_train_loader,
    check_hub_ready,
    distributed_session,
    finish_training,
    init_seed,
    keep_best,
    load_run_config,
    resolve_resume,
    run_training,
    save_run_config,
    start_training,
    train_parser,
    work_dir_of,
)
from .seg_data import DataConfig, build_dataset, build_train_transform, resolve_class_names

SECTIONS = ("model", "data", "train")


def parse_args(argv=None):
    return train_parser(__doc__, SECTIONS, "skip the dataset file checks (huge datasets)").parse_known_args(argv)


def main(argv=None) -> dict:
    args, overrides = parse_args(argv)
    cfg = load_run_config(args.config, overrides, sections=SECTIONS)
    with distributed_session(args.device) as env:
        return train(cfg, args, work_dir_of(args), env)


def _prepare(cfg, args, env):
    """Everything that can fail, before any training: config, datasets (validated), Hub access."""
    data_cfg = DataConfig.from_dict(cfg["data"], "data")
    tcfg = cfg["train"]
    accum = accumulation_steps(tcfg.total_batch, tcfg.batch_size, env.world_size)
    train_split, val_split = data_cfg.splits()
    error = None
    train_ds = val_ds = None
    try:
        train_ds = build_dataset(data_cfg, train_split, tcfg.seed)
        val_ds = build_dataset(data_cfg, val_split, tcfg.seed) if val_split else None
        model_cfg = resolve_class_names(DenseCLIPConfig.from_dict(cfg["model"], "model"), train_ds,
                                        explicit="class_names" in cfg["model"])
        if env.is_main:
            mode = "none" if args.skip_validate else data_cfg.validate
            for ds in (train_ds, val_ds):
                if ds is not None:
                    ds.validate(mode)
            if args.push_to_hub:
                check_hub_ready(args.push_to_hub)
        if tcfg.sync_bn and env.distributed and env.device.type != "cuda":
            raise ValueError("train.sync_bn needs GPUs (SyncBatchNorm has no CPU implementation); "
                             "pass --train.sync_bn false")
    except Exception as e:  # noqa: BLE001 (re-raised on every rank)
        error = e
    broadcast_error(error, env)
    return data_cfg, model_cfg, train_ds, val_ds, accum


def _evaluate(run, val_ds, it: int) -> dict:
    """mIoU & co. on the validation set (split over the ranks); keeps the best model in work_dir/best."""
    model, tcfg, log = run.model, run.cfg, run.log
    broadcast_buffers(model, run.env)  # evaluate rank 0's BN statistics (the checkpoint's) on every rank
    model.eval()
    results = evaluate(model, val_ds, model.cfg.test, rank=run.env.rank, world_size=run.env.world_size,
                       amp_dtype=run.amp.dtype, max_images=tcfg.eval_max_images, workers=min(tcfg.workers, 2),
                       progress=False)
    model.train()
    log.scalars(it, {k: 100 * results[k] for k in ("mIoU", "mAcc", "aAcc")}, prefix="val")
    log.info(f"iter {it}: mIoU {100 * results['mIoU']:.2f}  mAcc {100 * results['mAcc']:.2f}  "
             f"aAcc {100 * results['aAcc']:.2f}  ({results['num_images']} images, {results['seconds']:.1f} s)")
    keep_best(run, "mIoU", results["mIoU"] if math.isfinite(results["mIoU"]) else -1.0, results)
    return results


def train(cfg, args, work_dir: Path, env) -> dict:
    tcfg = cfg["train"]
    data_cfg, model_cfg, train_ds, val_ds, accum = _prepare(cfg, args, env)
    resume_from = resolve_resume(args.resume, work_dir)
    torch.manual_seed(init_seed(tcfg.seed))  # identical random init (contexts, decoders) on every rank
    # resuming: the checkpoint overwrites every weight, so CLIP's are not loaded (works offline)
    model = denseclip.build_model(model_cfg, pretrained=resume_from is None)
    run = start_training(model, tcfg, env, work_dir, accum, resume_from, best={"mIoU": -1.0, "iteration": -1},
                         save_model=denseclip.save_checkpoint, progress=not args.no_progress)
    model = run.model  # on the device (SyncBatchNorm when asked); run.train_model adds DDP / torch.compile
    if env.is_main:
        save_run_config({"model": model.cfg, "data": data_cfg, "train": tcfg}, work_dir / "config.yaml")
    run.log.info(f"{model.cfg.name}: {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f} M "
                 f"trainable params; {len(train_ds)} training images ({train_ds.name}); world {env.world_size} x "
                 f"batch {tcfg.batch_size} x accumulation {accum} = total batch {tcfg.total_batch}")
    loader = build_train_loader(train_ds, build_train_transform(data_cfg, model.cfg.ignore_index), tcfg, env,
                                start_iter=run.iteration)

    def step(batch) -> dict[str, torch.Tensor]:
        """One micro-batch -> its losses: images (b, 3, c, c), labels (b, c, c) -> {"loss", "loss_seg",
        "loss_aux"} (the engine runs it under autocast, then backward, accumulation, the optimizer step)."""
        images, labels = (t.to(env.device, non_blocking=True) for t in batch)
        if tcfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return run.train_model(images, labels)

    validate = None if val_ds is None else partial(_evaluate, run, val_ds)  # validate(it) -> metrics
    if run_training(run, iter(loader), step, validate, stop_at=args.stop_at):
        return {"stopped_at": run.iteration}
    return finish_training(run, validate, push_to_hub=args.push_to_hub)


if __name__ == "__main__":
    main()
