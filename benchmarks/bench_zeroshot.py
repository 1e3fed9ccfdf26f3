"""Latency of one zero-shot `predict` against a bare open_clip `encode_image` at the same size.

    python benchmarks/bench_zeroshot.py                                  # RN50 + ViT-B-16, 448 px, 20 classes, fp32
    python benchmarks/bench_zeroshot.py --channels-last --bf16 --threads 2

Random weights (the Hub is unreachable here; speed does not depend on the weights). The text embeddings
are cached by a warm-up call, so `predict` = image load + resize + dense encoder + score maps + full-size
scores/probs/labels. The bare baseline is `encode_image` of an open_clip model built with
`force_image_size=size` on a ready, normalised tensor. Targets (issue): predict <= 1.5x encode_image,
and RN50 at 448 px < 0.5 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

CLASSES = ["sky", "tree", "road", "person", "car", "building", "grass", "water", "wall", "floor", "ceiling",
           "table", "chair", "dog", "cat", "bicycle", "boat", "mountain", "sand", "window"]


def interleaved(fns: dict, runs: int, warmup: int) -> dict:
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


def bench_model(name: str, args: argparse.Namespace) -> dict:
    import open_clip

    from denseclip.zeroshot import ZeroShotSegmenter

    dtype = torch.bfloat16 if args.bf16 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zs = ZeroShotSegmenter.from_pretrained(name, None, device="cpu", size=args.size, autocast_dtype=dtype,
                                               channels_last=args.channels_last)
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
    zs.predict(img, names)  # fills the text cache
    t, outs = interleaved({"encode": encode, "predict": lambda: zs.predict(img, names)}, args.runs, args.warmup)
    part = {k: statistics.median(r.timing[k] for r in outs["predict"]) for k in ("text", "image", "render")}
    return {"model": name, **t, "ratio": t["predict"] / t["encode"], **part, "mode": zs.dense_mode}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["RN50", "ViT-B-16"])
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--channels-last", action="store_true", help="NHWC model and input (both paths)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (both paths); fp16 is never used on CPU")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = ",".join(f for f, on in (("channels_last", args.channels_last), ("bf16", args.bf16)) if on) or "fp32"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size}x{args.size} px, "
          f"{args.classes} classes (cached text), {flags}, median of {args.runs} after {args.warmup} warm-up")
    head = (f"{'model':<10} {'mode':<6} {'encode_image s':>14} {'predict s':>10} {'ratio':>6} "
            f"{'dense s':>8} {'render s':>9} {'text s':>7}")
    print(head)
    print("-" * len(head))
    for name in args.models:
        r = bench_model(name, args)
        print(f"{r['model']:<10} {r['mode']:<6} {r['encode']:>14.3f} {r['predict']:>10.3f} {r['ratio']:>6.2f} "
              f"{r['image']:>8.3f} {r['render']:>9.3f} {r['text']:>7.4f}")


if __name__ == "__main__":
    main()
