"""Latency of one zero-shot `predict` per method against a bare open_clip `encode_image` at the same size.

    python benchmarks/bench_zeroshot.py                          # every method, RN50 + ViT-B-16, 448 px, fp32
    python benchmarks/bench_zeroshot.py --methods naclip naclip+pamr proxyclip --threads 2
    python benchmarks/bench_zeroshot.py --channels-last --bf16

Random weights, built offline (`create_clip(name, None)`; ProxyCLIP's DINO ViT-B/8 from timm, random): speed
does not depend on the weights. The text embeddings are cached by a warm-up call, so `predict` = image
load + resize + dense encoder + score maps + full-size scores/probs/labels (+ PAMR for "+pamr"). The bare
baseline is `encode_image` of an open_clip model built with `force_image_size=size` on a ready, normalised
tensor. Target (issue 12): predict <= 1.2x encode_image for every method but ProxyCLIP and PAMR, whose cost
is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

CLASSES = ["sky", "tree", "road", "person", "car", "building", "grass", "water", "wall", "floor", "ceiling",
           "table", "chair", "dog", "cat", "bicycle", "boat", "mountain", "sand", "window"]
METHODS = {"RN50": ["maskclip", "attention_pool", "maskclip+pamr"],
           "ViT-B-16": ["naclip", "sclip", "clearclip", "clip_surgery", "maskclip", "vv", "vanilla",
                        "naclip+pamr", "proxyclip"]}


def interleaved(fns: dict, runs: int, warmup: int) -> tuple[dict, dict]:
    """Median seconds of each callable, runs alternating between them so that both see the same machine load
    (other processes on a shared CPU shift absolute numbers; the ratio stays meaningful)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times, outs = {k: [] for k in fns}, {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            outs[k].append(fn())
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, outs


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    import open_clip

    from denseclip.clip import create_clip
    from denseclip.zeroshot import METHODS as REGISTRY
    from denseclip.zeroshot import ZeroShotSegmenter

    dtype = torch.bfloat16 if args.bf16 else None
    clip = create_clip(name, None, quick_gelu=True)
    bare = open_clip.create_model(name, pretrained=None, force_image_size=args.size).eval()
    x = torch.randn(1, 3, args.size, args.size)
    if args.channels_last:
        bare = bare.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def encode():
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return bare.encode_image(x)

    img = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    names = CLASSES[:args.classes]
    rows = []
    tower = "resnet" if name.startswith("RN") else "vit"
    for spec in args.methods or METHODS.get(name, ["maskclip"]):
        method, _, extra = spec.partition("+")
        if tower not in REGISTRY[method].towers:
            continue
        zs = ZeroShotSegmenter(clip, name, method=method, pamr_steps=10 if extra == "pamr" else 0,
                               size=args.size, autocast_dtype=dtype, channels_last=args.channels_last,
                               proxy_weights=None, is_random=True)
        zs.predict(img, names)  # fills the text cache
        t, outs = interleaved({"encode": encode, "predict": lambda zs=zs: zs.predict(img, names)}, args.runs,
                              args.warmup)
        part = {k: statistics.median(r.timing[k] for r in outs["predict"]) for k in ("image", "render")}
        rows.append({"model": name, "method": spec, **t, "ratio": t["predict"] / t["encode"], **part})
        r = rows[-1]
        print(f"{r['model']:<9} {r['method']:<15} {r['encode']:>14.3f} {r['predict']:>10.3f} "
              f"{r['ratio']:>6.2f} {r['image']:>8.3f} {r['render']:>9.3f}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["RN50", "ViT-B-16"])
    p.add_argument("--methods", nargs="+", default=None, help="default: every method of each model")
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--channels-last", action="store_true", help="NHWC model and input (both paths)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (both paths); never fp16 on CPU")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = [f for f, on in (("channels_last", args.channels_last), ("bf16", args.bf16)) if on]
    flags = ",".join(flags) or "fp32"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size}x{args.size} px, "
          f"{args.classes} classes (cached text), {flags}, median of {args.runs} after {args.warmup} warm-up")
    head = (f"{'model':<9} {'method':<15} {'encode_image s':>14} {'predict s':>10} {'ratio':>6} "
            f"{'dense s':>8} {'render s':>9}")
    print(head)
    print("-" * len(head))
    for name in args.models:
        bench_model(name, args)


if __name__ == "__main__":
    main()
