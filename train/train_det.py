"""Train a DenseCLIP (or CLIP baseline) RetinaNet / Mask R-CNN on COCO-format data from a YAML config.

    python train/train_det.py --config train/configs/det_denseclip_retinanet_rn50_coco.yaml --work-dir work_dirs/ret50
    torchrun --nproc_per_node 8 train/train_det.py --config ...          # 8 GPUs x 2 images = total batch 16
    python train/train_det.py --config ... --schedule.epochs 1 --train.batch_size 1   # dotted overrides
    python train/train_det.py --config ... --work-dir work_dirs/ret50 --resume        # continue a killed run

The machinery is the segmentation engine's (train/engine): YAML + `--section.key value` overrides, torchrun,
AdamW groups from `model.param_groups`, linear warm-up, AMP, gradient clipping, the resumable data stream,
atomic checkpoints, tqdm/TensorBoard logs, --push-to-hub. Detection adds a `schedule:` section: the mmdet
1x schedule in epochs (train.max_iters is derived from it: epochs x ceil(images / total_batch)) with the lr
multiplied by `gamma` after each epoch in `steps`; `train.schedule` stays "constant" (warm-up only).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import (  # noqa: E402
    Amp,
    InfiniteSampler,
    RunLogger,
    StreamDataset,
    accumulation_steps,
    all_reduce_mean,
    barrier,
    broadcast_error,
    build_optimizer,
    check_hub_ready,
    cleanup_distributed,
    dataclass_from_dict,
    init_distributed,
    init_seed,
    load_run_config,
    load_training_state,
    load_weights_into,
    peak_memory_mb,
    push_folder,
    resolve_resume,
    rng_state,
    save_run_config,
    set_lr,
    set_rng_state,
    step_seed,
    write_checkpoint,
    write_json,
)
from engine.config import dataclass_to_dict  # noqa: E402

from denseclip.detection import (  # noqa: E402
    CocoDetection,
    build_detector,
    collate_detection,
    evaluate_detector,
    save_detector,
    to_sample,
    write_synthetic_coco,
)
from denseclip.detection.config import config_from_dict  # noqa: E402

SECTIONS = ("model", "data", "schedule", "train")


@dataclass
class DetDataConfig:
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
class ScheduleConfig:
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


def train_loader(ds, data: DetDataConfig, tcfg, env, start_iter: int) -> DataLoader:
    sampler = InfiniteSampler(tcfg.total_batch, tcfg.batch_size, env.world_size, env.rank, start_iter, tcfg.max_iters)
    stream = StreamDataset(_RawSamples(ds), FlipTransform(data.hflip_prob), tcfg.seed)
    return DataLoader(stream, batch_size=tcfg.batch_size, sampler=sampler, num_workers=tcfg.workers,
                      collate_fn=collate_detection, pin_memory=env.device.type == "cuda",
                      prefetch_factor=4 if tcfg.workers > 0 else None)


def val_loader(ds, env, workers: int, max_images: int | None = None, batch_size: int = 2) -> DataLoader:
    n = len(ds) if max_images is None else min(max_images, len(ds))
    return DataLoader(Subset(ds, list(range(env.rank, n, env.world_size))), batch_size=batch_size,
                      num_workers=workers, collate_fn=collate_detection)


def step_factor(it: int, step_iters: list[int], gamma: float) -> float:
    """mmcv StepLrUpdaterHook: lr x gamma for every step already reached."""
    return gamma ** sum(it >= s for s in step_iters)


def _to(targets: list[dict], device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


def detection_card(cfg, metrics: dict | None, repo_id: str) -> str:
    ap = (f"box AP {100 * metrics['bbox_AP']:.1f}" + (f", mask AP {100 * metrics['segm_AP']:.1f}"
                                                     if "segm_AP" in metrics else "")) if metrics else "not evaluated"
    return "\n".join([
        "---", "library_name: denseclip", "tags:", "- object-detection", "- denseclip", "- clip", "license: apache-2.0",
        "---", "", f"# {repo_id.split('/')[-1]}", "",
        f"DenseCLIP {cfg.detector} `{cfg.name}` (CLIP `{cfg.clip_model}`, {cfg.num_classes} classes, "
        f"{'language-guided' if cfg.use_text else 'CLIP baseline'}), torchvision detector; validation: {ap}.", "",
        "```python", "from denseclip.detection import load_detector, detect",
        f'model = load_detector("{repo_id}")', 'r = detect(model, "photo.jpg")  # r.boxes, r.names, r.scores', "```", ""])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--config", required=True, help="YAML with model:, data:, schedule:, train: sections")
    p.add_argument("--work-dir", help="checkpoints, logs, metrics (default: work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from the latest checkpoint in the work dir (no value), or from PATH")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the final model + model card to this Hub repo")
    p.add_argument("--skip-validate", action="store_true", help="skip the image-file check")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs only)")
    p.add_argument("--stop-at", type=int, help=argparse.SUPPRESS)  # debug: exit after this iteration
    return p.parse_known_args(argv)


def main(argv=None) -> dict:
    args, overrides = parse_args(argv)
    cfg = load_run_config(args.config, overrides, sections=SECTIONS)
    work_dir = Path(args.work_dir or Path("work_dirs") / Path(args.config).stem)
    env = init_distributed(args.device)
    try:
        return train(cfg, args, work_dir, env)
    finally:
        cleanup_distributed()


def _prepare(cfg, args, env):
    """Everything that can fail, before any training: configs, datasets, Hub access. An error on one rank
    is raised on every rank (engine.broadcast_error), never left as a hang."""
    error = parsed = None
    try:
        data = dataclass_from_dict(DetDataConfig, cfg["data"], "data")
        sched = dataclass_from_dict(ScheduleConfig, cfg["schedule"], "schedule")
        model_cfg = config_from_dict(cfg["model"])
        tcfg = cfg["train"]
        if tcfg.schedule != "constant":
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
        train_ds, val_ds = build_datasets(replace(data, synthetic=0), model_cfg.with_masks)
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
        per_epoch = math.ceil(len(train_ds) / tcfg.total_batch)
        tcfg = replace(tcfg, max_iters=sched.epochs * per_epoch)
        step_iters = [s * per_epoch for s in sched.steps]
        result = (data, sched, model_cfg, tcfg, train_ds, val_ds, accum, per_epoch, step_iters)
    except Exception as e:  # noqa: BLE001
        error = e
    broadcast_error(error, env)
    return result


def _evaluate(model, val_ds, tcfg, env, log, it, best, work_dir):
    loader = val_loader(val_ds, env, min(tcfg.workers, 2), tcfg.eval_max_images)
    t0 = time.perf_counter()
    metrics = evaluate_detector(model, loader, val_ds, env.device)
    model.train()
    if env.is_main:
        ap = {k: 100 * v for k, v in metrics.items() if k.startswith(("bbox_", "segm_"))}
        log.scalars(it, ap, prefix="val")
        log.info(f"iter {it}: " + "  ".join(f"{k} {v:.1f}" for k, v in ap.items() if k.endswith("AP"))
                 + f"  ({metrics['num_images']} images, {time.perf_counter() - t0:.1f} s)")
        if metrics["bbox_AP"] > best["bbox_AP"]:
            best.update(bbox_AP=metrics["bbox_AP"], iteration=it)
            save_detector(model, work_dir / "best", {"iteration": it, "bbox_AP": metrics["bbox_AP"]})
            write_json(work_dir / "best" / "metrics.json", {"iteration": it, **metrics})
    return metrics


def train(cfg, args, work_dir: Path, env) -> dict:
    data, sched, model_cfg, tcfg, train_ds, val_ds, accum, per_epoch, step_iters = _prepare(cfg, args, env)
    resume_from = resolve_resume(args.resume, work_dir)
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)  # cudnn.benchmark stays off: sizes vary
    torch.manual_seed(init_seed(tcfg.seed))  # identical random init on every rank
    model = build_detector(model_cfg, pretrained=resume_from is None)  # resuming: the checkpoint has every weight
    if resume_from is not None:
        load_weights_into(model, resume_from)
    model.to(env.device).train()
    if tcfg.sync_bn and env.distributed:  # off in the presets: the authors' CLIP ResNet uses plain BatchNorm
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, tcfg)
    amp = Amp(tcfg.amp, env.device)
    start_iter, best = 0, {"bbox_AP": -1.0, "iteration": -1}
    if resume_from is not None:
        state = load_training_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        amp.load_state_dict(state["scaler"])
        start_iter, best = int(state["iteration"]), dict(state["best"])
        set_rng_state(state["rng"])
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
        find_unused_parameters=tcfg.find_unused_parameters) if env.distributed else None
    train_model = ddp or model

    log = RunLogger(work_dir, env, tcfg.max_iters, start_iter, progress=not args.no_progress)
    if env.is_main:
        save_run_config({"model": model.cfg, "data": data, "schedule": sched, "train": tcfg}, work_dir / "config.yaml")
    log.info(f"{model.cfg.name}: {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f} M "
             f"trainable params; {len(train_ds)} training images; {sched.epochs} epochs x {per_epoch} iterations, "
             f"lr steps at {step_iters}; world {env.world_size} x batch {tcfg.batch_size} x accumulation {accum}")
    if resume_from is not None:
        log.info(f"resumed from {resume_from} at iteration {start_iter}")

    batches = iter(train_loader(train_ds, data, tcfg, env, start_iter))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    window, n_window, t_window = defaultdict(float), 0, time.perf_counter()
    results, it = {}, start_iter
    while it < tcfg.max_iters:
        factor = step_factor(it, step_iters, sched.gamma)
        lr = set_lr(optimizer, it, tcfg) * factor  # warm-up (engine), then the step decay
        for g in optimizer.param_groups:
            g["lr"] *= factor
        for m in range(accum):
            images, targets = next(batches)
            images = [im.to(env.device, non_blocking=True) for im in images]
            targets = _to(targets, env.device)
            torch.manual_seed(step_seed(tcfg.seed, it, m * env.world_size + env.rank))  # dropout, RoI sampling
            sync = ddp is None or m == accum - 1
            with contextlib.nullcontext() if sync else ddp.no_sync():
                with amp.autocast():
                    losses = train_model(images, targets)
                amp.backward(losses["loss"] / accum)
            for k, v in losses.items():
                window[k] += v.detach().float() / accum
        grad_norm = amp.step(optimizer, params, tcfg.grad_clip)
        optimizer.zero_grad(set_to_none=True)
        it += 1
        n_window += 1
        log.advance()
        if it % tcfg.log_interval == 0 or it == tcfg.max_iters:
            values = all_reduce_mean({k: float(v) / n_window for k, v in window.items()}, env)
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"loss is {values['loss']} at iteration {it}; lower train.lr or keep "
                                         "train.grad_clip (the authors: 0.1)")
            values.update(lr=lr, images_per_s=tcfg.total_batch * n_window / max(time.perf_counter() - t_window, 1e-9),
                          memory_mb=peak_memory_mb(env.device), epoch=it / per_epoch)
            if grad_norm is not None:
                values["grad_norm"] = grad_norm
            log.scalars(it, values)
            log.info(f"iter {it}/{tcfg.max_iters}  " + "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
            window, n_window, t_window = defaultdict(float), 0, time.perf_counter()
        if val_ds is not None and tcfg.eval_interval and it % tcfg.eval_interval == 0 and it < tcfg.max_iters:
            results = _evaluate(model, val_ds, tcfg, env, log, it, best, work_dir)
        if it % tcfg.checkpoint_interval == 0 or it == tcfg.max_iters:
            if env.is_main:
                state = {"iteration": it, "optimizer": optimizer.state_dict(), "scaler": amp.state_dict(),
                         "rng": rng_state(), "best": best, "world_size": env.world_size, "accumulation": accum,
                         "train": dataclass_to_dict(tcfg)}
                log.info(f"checkpoint {write_checkpoint(model, work_dir, it, state, tcfg.keep_checkpoints)}")
            barrier(env)
        if args.stop_at is not None and it >= args.stop_at:
            log.info(f"--stop-at {args.stop_at}: stopping without finishing")
            log.close()
            return {"stopped_at": it}

    if val_ds is not None and tcfg.eval_at_end:
        results = _evaluate(model, val_ds, tcfg, env, log, it, best, work_dir)
    if env.is_main:
        final = save_detector(model, work_dir / "final", {"iteration": it}).parent
        summary = {"iteration": it, "best": best, **results}
        write_json(work_dir / "metrics.json", summary)
        if results:
            write_json(final / "metrics.json", summary)
        log.info(f"final model: {final}" + (f"; box AP {100 * results['bbox_AP']:.1f}" if results else ""))
        if args.push_to_hub:
            log.info(f"pushed to {push_folder(final, args.push_to_hub, detection_card(model.cfg, results, args.push_to_hub))}")
    barrier(env)
    log.close()
    return {"iteration": it, "best": best, **results}


if __name__ == "__main__":
    main()
