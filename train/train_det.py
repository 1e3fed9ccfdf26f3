"""Train a DenseCLIP (or CLIP baseline) RetinaNet / Mask R-CNN on COCO-format data from a YAML config.

    python -m train.train_det --config train/configs/det_denseclip_retinanet_rn50_coco.yaml --work-dir work_dirs/ret50
    torchrun --nproc_per_node 8 -m train.train_det --config ...          # 8 GPUs x 2 images = total batch 16
    python -m train.train_det --config ... --schedule.epochs 1 --train.batch_size 1   # dotted overrides
    python -m train.train_det --config ... --work-dir work_dirs/ret50 --resume        # continue a killed run

The machinery is the segmentation engine's (train/engine): YAML + `--section.key value` overrides, torchrun,
AdamW groups from `model.param_groups`, linear warm-up, AMP, gradient clipping, the resumable data stream,
the training loop, atomic checkpoints, tqdm/TensorBoard logs, --push-to-hub. Detection adds a `schedule:`
section: the mmdet 1x schedule in epochs, turned into iterations here (train.max_iters = epochs x
ceil(images / total_batch); the engine's step schedule, train.lr_steps, multiplies the lr by `gamma` after
each epoch in `steps`). Leave `train.schedule: constant` in the YAML; the run's config.yaml says "step".
"""

from __future__ import annotations

if not __package__:  # run as a file: the package's imports cannot work
    raise SystemExit("run it as a module from the repository root: python -m train.train_det --help")

import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from denseclip.checkpoints import save_checkpoint
from denseclip.config import Config, DetectionConfig
from denseclip.detection import (
    CocoDetection,
    build_detector,
    collate_detection,
    evaluate_detector,
    to_sample,
    write_synthetic_coco,
)

from .engine import (
    accumulation_steps,
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

SECTIONS = ("model", "data", "schedule", "train")


@dataclass
class DetDataConfig(Config):
    """COCO-format data: image folders + instances jsons, relative to `root` (the COCO 2017 layout)."""

    root: str = "data/coco"
    train_images: str = "train2017"
    train_ann: str = "annotations/instances_train2017.json"
    val_images: str | None = "val2017"  # None: no evaluation
    val_ann: str | None = "annotations/instances_val2017.json"
    synthetic: int = 0  # > 0: first write a synthetic COCO-format set of this many training images to root
    synthetic_val: int = 8
    hflip_prob: float = 0.5  # the authors' RandomFlip(0.5)


@dataclass
class ScheduleConfig(Config):
    """mmdet step schedule in epochs (1x: 12 epochs, lr x0.1 after epochs 8 and 11)."""

    epochs: int = 12
    steps: tuple[int, ...] = (8, 11)
    gamma: float = 0.1


def build_datasets(data: DetDataConfig, with_masks: bool, seed: int = 0):
    root = Path(data.root)
    if data.synthetic:
        write_synthetic_coco(root, data.train_images, data.synthetic, seed=seed)
        if data.val_images:
            write_synthetic_coco(root, data.val_images, data.synthetic_val, seed=seed)
    train = CocoDetection(root / data.train_images, root / data.train_ann, train=True, with_masks=with_masks,
                          hflip_prob=0.0)  # flips come from the stream's per-sample RNG (resumable)
    val = None
    if data.val_images and data.val_ann:
        val = CocoDetection(root / data.val_images, root / data.val_ann, with_masks=with_masks)
    return train, val


class _RawSamples(torch.utils.data.Dataset):
    """CocoDetection as the engine's StreamDataset wants it: {"image": uint8 array, "label": target}."""

    def __init__(self, ds: CocoDetection):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        rgb, target = self.ds.load(i)
        return {"image": rgb, "label": target}


class FlipTransform:
    def __init__(self, prob: float):
        self.prob = prob

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator):
        return to_sample(image, target, flip=bool(rng.random() < self.prob))


def val_loader(ds, env, workers: int, max_images: int | None = None, batch_size: int = 2) -> DataLoader:
    n = len(ds) if max_images is None else min(max_images, len(ds))
    return DataLoader(Subset(ds, list(range(env.rank, n, env.world_size))), batch_size=batch_size,
                      num_workers=workers, collate_fn=collate_detection)


def parse_args(argv=None):
    return train_parser(__doc__, SECTIONS, "skip the image-file check").parse_known_args(argv)


def main(argv=None) -> dict:
    args, overrides = parse_args(argv)
    cfg = load_run_config(args.config, overrides, sections=SECTIONS)
    with distributed_session(args.device) as env:
        return train(cfg, args, work_dir_of(args), env)


def _prepare(cfg, args, env):
    """Everything that can fail, before any training: configs, datasets, Hub access. An error on one rank
    is raised on every rank (engine.broadcast_error), never left as a hang."""
    error = parsed = None
    try:
        data = DetDataConfig.from_dict(cfg["data"], "data")
        sched = ScheduleConfig.from_dict(cfg["schedule"], "schedule")
        model_cfg = DetectionConfig.from_dict(cfg["model"], "model")
        tcfg = cfg["train"]
        if tcfg.schedule not in ("constant", "step"):  # "step": a run's own config.yaml
            raise ValueError("detection schedules come from the schedule: section; set train.schedule: constant")
        if tcfg.compile or tcfg.channels_last:
            raise ValueError("train.compile and train.channels_last are not supported for detection; set them false")
        if tcfg.sync_bn and env.device.type != "cuda":
            raise ValueError("train.sync_bn needs GPUs (SyncBatchNorm has no CPU implementation); set it false")
        accum = accumulation_steps(tcfg.total_batch, tcfg.batch_size, env.world_size)
        if env.is_main and data.synthetic:  # rank 0 writes the synthetic set; the broadcast below waits for it
            build_datasets(data, model_cfg.with_masks, tcfg.seed)
        parsed = (data, sched, model_cfg, tcfg, accum)
    except Exception as e:  # noqa: BLE001 (re-raised on every rank)
        error = e
    broadcast_error(error, env)
    data, sched, model_cfg, tcfg, accum = parsed
    result = None
    try:
        train_ds, val_ds = build_datasets(data.replace(synthetic=0), model_cfg.with_masks)
        if "class_names" not in cfg["model"]:
            model_cfg = model_cfg.replace(class_names=train_ds.class_names)
        elif tuple(model_cfg.class_names) != train_ds.class_names:
            raise ValueError(f"model.class_names differ from the categories of {train_ds.ann_file}")
        if env.is_main and not args.skip_validate:
            for ds in (train_ds, val_ds):
                if ds is not None:
                    ds.validate()
        if env.is_main and args.push_to_hub:
            check_hub_ready(args.push_to_hub)
        per_epoch = math.ceil(len(train_ds) / tcfg.total_batch)  # epochs -> iterations, for the engine
        tcfg = tcfg.replace(max_iters=sched.epochs * per_epoch, schedule="step",
                       lr_steps=tuple(s * per_epoch for s in sched.steps), lr_gamma=sched.gamma)
        result = (data, sched, model_cfg, tcfg, train_ds, val_ds, accum, per_epoch)
    except Exception as e:  # noqa: BLE001
        error = e
    broadcast_error(error, env)
    return result


def _evaluate(run, val_ds, it: int) -> dict:
    """COCO box (and mask) AP on the validation set; keeps the best model in work_dir/best."""
    tcfg, log = run.cfg, run.log
    loader = val_loader(val_ds, run.env, min(tcfg.workers, 2), tcfg.eval_max_images)
    t0 = time.perf_counter()
    metrics = evaluate_detector(run.model, loader, val_ds, run.env.device)  # the numbers on rank 0 only
    run.model.train()
    if run.env.is_main:
        ap = {k: 100 * v for k, v in metrics.items() if k.startswith(("bbox_", "segm_"))}
        log.scalars(it, ap, prefix="val")
        log.info(f"iter {it}: " + "  ".join(f"{k} {v:.1f}" for k, v in ap.items() if k.endswith("AP"))
                 + f"  ({metrics['num_images']} images, {time.perf_counter() - t0:.1f} s)")
        keep_best(run, "bbox_AP", metrics["bbox_AP"], metrics)
    return metrics


def train(cfg, args, work_dir: Path, env) -> dict:
    data, sched, model_cfg, tcfg, train_ds, val_ds, accum, per_epoch = _prepare(cfg, args, env)
    resume_from = resolve_resume(args.resume, work_dir)
    torch.manual_seed(init_seed(tcfg.seed))  # identical random init on every rank
    model = build_detector(model_cfg, pretrained=resume_from is None)  # resuming: the checkpoint has every weight
    # sync_bn is off in the presets (the authors' CLIP ResNet uses plain BatchNorm); image sizes vary: no cudnn.benchmark
    run = start_training(model, tcfg, env, work_dir, accum, resume_from, best={"bbox_AP": -1.0, "iteration": -1},
                         save_model=save_checkpoint, progress=not args.no_progress, cudnn_benchmark=False)
    model = run.model
    if env.is_main:
        save_run_config({"model": model.cfg, "data": data, "schedule": sched, "train": tcfg}, work_dir / "config.yaml")
    run.log.info(f"{model.cfg.name}: {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f} M "
                 f"trainable params; {len(train_ds)} training images; {sched.epochs} epochs x {per_epoch} iterations, "
                 f"lr steps at {list(tcfg.lr_steps)}; world {env.world_size} x batch {tcfg.batch_size} x "
                 f"accumulation {accum}")
    loader = build_train_loader(_RawSamples(train_ds), FlipTransform(data.hflip_prob), tcfg, env,
                                start_iter=run.iteration, collate_fn=collate_detection)

    def step(batch) -> dict[str, torch.Tensor]:
        """One micro-batch -> its losses: images [(3, H, W)], targets [{"boxes", "labels"(, "masks")}] ->
        {"loss", the detector's terms, "loss_aux"}."""
        images, targets = batch
        images = [im.to(env.device, non_blocking=True) for im in images]
        targets = [{k: v.to(env.device, non_blocking=True) for k, v in t.items()} for t in targets]
        return run.train_model(images, targets)

    validate = None if val_ds is None else partial(_evaluate, run, val_ds)  # validate(it) -> metrics
    if run_training(run, iter(loader), step, validate, stop_at=args.stop_at, iters_per_epoch=per_epoch):
        return {"stopped_at": run.iteration}
    return finish_training(run, validate, push_to_hub=args.push_to_hub)


if __name__ == "__main__":
    main()
