"""Train a DenseCLIP (or CLIP + FPN) segmentor from a YAML config.

    python train/train_seg.py --config train/configs/denseclip_rn50_ade20k.yaml --work-dir work_dirs/rn50
    torchrun --nproc_per_node 8 train/train_seg.py --config ... --work-dir ...       # 8 GPUs x 4 = batch 32
    python train/train_seg.py --config ... --train.max_iters 100 --model.num_contexts 4   # dotted overrides
    python train/train_seg.py --config ... --work-dir work_dirs/rn50 --resume         # continue a killed run

Any `--section.key value` not listed below overrides the YAML. On fewer GPUs the same total batch
(train.total_batch) is reached by gradient accumulation, computed from the per-GPU batch and the
world size. Everything that can fail (dataset files, weights, the Hub) is checked before iteration 0.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import (  # noqa: E402
    Amp,
    RunLogger,
    accumulation_steps,
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    broadcast_error,
    build_optimizer,
    build_train_loader,
    check_hub_ready,
    cleanup_distributed,
    dataclass_from_dict,
    init_distributed,
    init_seed,
    load_run_config,
    load_training_state,
    load_weights_into,
    model_card,
    model_config_from_dict,
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
from eval_seg import evaluate  # noqa: E402
from seg_data import DataConfig, build_dataset, build_train_transform, resolve_class_names  # noqa: E402

import denseclip  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--config", required=True, help="YAML with model:, data:, train: sections")
    p.add_argument("--work-dir", help="checkpoints, logs, metrics (default: work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from the latest checkpoint in the work dir (no value), or from PATH")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the final model + model card to this Hub repo")
    p.add_argument("--skip-validate", action="store_true", help="skip the dataset file checks (huge datasets)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs only)")
    p.add_argument("--stop-at", type=int, help=argparse.SUPPRESS)  # debug: exit after this iteration (kill test)
    return p.parse_known_args(argv)


def main(argv=None) -> dict:
    args, overrides = parse_args(argv)
    cfg = load_run_config(args.config, overrides)
    work_dir = Path(args.work_dir or Path("work_dirs") / Path(args.config).stem)
    env = init_distributed(args.device)
    try:
        return train(cfg, args, work_dir, env)
    finally:
        cleanup_distributed()


def _prepare(cfg, args, env):
    """Everything that can fail, before any training: config, datasets (validated), Hub access."""
    data_cfg = dataclass_from_dict(DataConfig, cfg["data"], "data")
    tcfg = cfg["train"]
    accum = accumulation_steps(tcfg.total_batch, tcfg.batch_size, env.world_size)
    train_split, val_split = data_cfg.splits()
    error = None
    train_ds = val_ds = None
    try:
        train_ds = build_dataset(data_cfg, train_split, tcfg.seed)
        val_ds = build_dataset(data_cfg, val_split, tcfg.seed) if val_split else None
        model_cfg = resolve_class_names(model_config_from_dict(cfg["model"]), train_ds,
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


def _build_model(model_cfg, tcfg, env, resume_from):
    torch.manual_seed(init_seed(tcfg.seed))  # identical random init (contexts, decoders) on every rank
    # resuming: the checkpoint overwrites every weight, so CLIP's are not loaded (works offline)
    model = denseclip.build_model(model_cfg, pretrained=resume_from is None)
    if resume_from is not None:
        load_weights_into(model, resume_from)
    model.to(env.device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if tcfg.sync_bn and env.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.train()


def _evaluate(model, val_ds, tcfg, env, amp, log, it, best, work_dir):
    broadcast_buffers(model, env)  # evaluate rank 0's BN statistics (the checkpoint's) on every rank
    model.eval()
    results = evaluate(model, val_ds, model.cfg.test, env, amp.dtype, tcfg.eval_max_images,
                       workers=min(tcfg.workers, 2), progress=False)
    model.train()
    log.scalars(it, {k: 100 * results[k] for k in ("mIoU", "mAcc", "aAcc")}, prefix="val")
    log.info(f"iter {it}: mIoU {100 * results['mIoU']:.2f}  mAcc {100 * results['mAcc']:.2f}  "
             f"aAcc {100 * results['aAcc']:.2f}  ({results['num_images']} images, {results['seconds']:.1f} s)")
    miou = results["mIoU"] if math.isfinite(results["mIoU"]) else -1.0
    if miou > best["mIoU"]:
        best.update(mIoU=miou, iteration=it)
        if env.is_main:
            denseclip.save_checkpoint(model, work_dir / "best", {"iteration": it, "mIoU": miou})
            write_json(work_dir / "best" / "metrics.json", {"iteration": it, **results})
    return results


def train(cfg, args, work_dir: Path, env) -> dict:
    tcfg = cfg["train"]
    data_cfg, model_cfg, train_ds, val_ds, accum = _prepare(cfg, args, env)
    resume_from = resolve_resume(args.resume, work_dir)
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    model = _build_model(model_cfg, tcfg, env, resume_from)
    optimizer = build_optimizer(model, tcfg)
    amp = Amp(tcfg.amp, env.device)
    start_iter, best = 0, {"mIoU": -1.0, "iteration": -1}
    if resume_from is not None:
        state = load_training_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        amp.load_state_dict(state["scaler"])
        start_iter, best = int(state["iteration"]), dict(state["best"])
        set_rng_state(state["rng"])
        saved = state.get("train", {})
        changed = [k for k in ("seed", "total_batch", "max_iters", "lr") if k in saved and saved[k] != getattr(tcfg, k)]
        if changed and env.is_main:
            print(f"warning: resuming with a different train.{', train.'.join(changed)} than the checkpoint's; "
                  "the result will differ from an uninterrupted run", file=sys.stderr)
    ddp = None
    train_model = model
    if env.distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
            find_unused_parameters=tcfg.find_unused_parameters)
        train_model = ddp
    if tcfg.compile:
        train_model = torch.compile(train_model)

    log = RunLogger(work_dir, env, tcfg.max_iters, start_iter, progress=not args.no_progress)
    if env.is_main:
        save_run_config({"model": model.cfg, "data": data_cfg, "train": tcfg}, work_dir / "config.yaml")
    log.info(f"{model.cfg.name}: {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f} M "
             f"trainable params; {len(train_ds)} training images ({train_ds.name}); world {env.world_size} x "
             f"batch {tcfg.batch_size} x accumulation {accum} = total batch {tcfg.total_batch}")
    if resume_from is not None:
        log.info(f"resumed from {resume_from} at iteration {start_iter}")
    elif (work_dir / "checkpoints").is_dir() and any((work_dir / "checkpoints").glob("iter_*")):
        log.info(f"warning: {work_dir}/checkpoints holds checkpoints of an earlier run; pass --resume to continue it")

    loader = build_train_loader(train_ds, build_train_transform(data_cfg, model.cfg.ignore_index), tcfg.seed,
                                tcfg.total_batch, tcfg.batch_size, env.world_size, env.rank, start_iter,
                                tcfg.max_iters, tcfg.workers, pin_memory=env.device.type == "cuda")
    batches = iter(loader)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    window, n_window, t_window = defaultdict(float), 0, time.perf_counter()
    results, it = {}, start_iter
    while it < tcfg.max_iters:
        lr = set_lr(optimizer, it, tcfg)
        for m in range(accum):
            images, labels = next(batches)
            images = images.to(env.device, non_blocking=True)
            labels = labels.to(env.device, non_blocking=True)
            if tcfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            torch.manual_seed(step_seed(tcfg.seed, it, m * env.world_size + env.rank))  # dropout, drop path
            sync = ddp is None or m == accum - 1  # gradients are all-reduced on the last micro-step only
            with contextlib.nullcontext() if sync else ddp.no_sync():
                with amp.autocast():
                    losses = train_model(images, labels)
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
                raise FloatingPointError(f"loss is {values['loss']} at iteration {it}; lower train.lr, "
                                         "set train.grad_clip, or train without fp16 AMP")
            dt = time.perf_counter() - t_window
            values.update(lr=lr, images_per_s=tcfg.total_batch * n_window / max(dt, 1e-9),
                          memory_mb=peak_memory_mb(env.device))
            if grad_norm is not None:
                values["grad_norm"] = grad_norm
            log.scalars(it, values)
            log.info(f"iter {it}/{tcfg.max_iters}  " + "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
            window, n_window, t_window = defaultdict(float), 0, time.perf_counter()

        if val_ds is not None and tcfg.eval_interval and it % tcfg.eval_interval == 0 and it < tcfg.max_iters:
            results = _evaluate(model, val_ds, tcfg, env, amp, log, it, best, work_dir)
        if it % tcfg.checkpoint_interval == 0 or it == tcfg.max_iters:
            if env.is_main:
                state = {"iteration": it, "optimizer": optimizer.state_dict(), "scaler": amp.state_dict(),
                         "rng": rng_state(), "best": best, "sampler": {"next_iteration": it, "seed": tcfg.seed,
                                                                        "total_batch": tcfg.total_batch},
                         "world_size": env.world_size, "accumulation": accum, "train": dataclass_to_dict(tcfg)}
                folder = write_checkpoint(model, work_dir, it, state, tcfg.keep_checkpoints)
                log.info(f"checkpoint {folder}")
            barrier(env)
        if args.stop_at is not None and it >= args.stop_at:  # debug: behave like a run killed here
            log.info(f"--stop-at {args.stop_at}: stopping without finishing")
            log.close()
            return {"stopped_at": it}

    if val_ds is not None and tcfg.eval_at_end:
        results = _evaluate(model, val_ds, tcfg, env, amp, log, it, best, work_dir)
    if env.is_main:
        final = work_dir / "final"
        denseclip.save_checkpoint(model, final, {"iteration": it})
        summary = {"iteration": it, "best": best, **results}
        write_json(work_dir / "metrics.json", summary)
        if results:
            write_json(final / "metrics.json", summary)
        log.info(f"final model: {final}" + (f"; mIoU {100 * results['mIoU']:.2f}" if results else ""))
        if args.push_to_hub:
            card = model_card(model.cfg, results, dataclass_to_dict(tcfg), args.push_to_hub)
            log.info(f"pushed to {push_folder(final, args.push_to_hub, card)}")
    barrier(env)
    log.close()
    return {"iteration": it, "best": best, **results}


if __name__ == "__main__":
    main()
