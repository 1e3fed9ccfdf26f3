"""Zero-shot `predict`: fp32 against the fast path (weights held in `fast_dtype`), both against a bare fp32
open_clip `encode_image` at the same size, and what the hardware allows.

    python benchmarks/bench_zeroshot.py              # ViT-B-16 (NACLIP, ClearCLIP, +PAMR), RN50, RN101
    python benchmarks/bench_zeroshot.py --models ViT-B-16 --methods naclip proxyclip --threads 2

Per row: seconds of one predict (median, runs interleaved with the baseline so both see the same machine
load), its ratio to encode_image, the FLOPs of one predict (torch's FlopCounterMode) and the GFLOP/s each
path reaches, the peak memory of a fresh process that builds the model and predicts once (VmHWM, in its
own subprocess per dtype), and how close the fast path is to fp32: the mean
cosine between their score maps and the share of pixels with the same argmax. Random weights, built
offline (speed does not depend on them), so their near-tied maps understate the agreement: the last table
measures it on a trained model, the toy micro-CLIP, on held-out synthetic scenes (and its mIoU both ways).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = ["sky", "tree", "road", "person", "car", "building", "grass", "water", "wall", "floor", "ceiling",
           "table", "chair", "dog", "cat", "bicycle", "boat", "mountain", "sand", "window"]
METHODS = {"RN50": ["maskclip", "maskclip+pamr"], "RN101": ["maskclip"],
           "ViT-B-16": ["naclip", "clearclip", "naclip+pamr"]}


def matmul_gflops(dtype: torch.dtype, n: int = 2048, runs: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(runs):
        a @ b
    return 2 * n ** 3 * runs / (time.perf_counter() - t0) / 1e9


def peak_mib(model: str, dtype: str, size: int, spec: str) -> float:
    """Peak resident memory (VmHWM) of a fresh process that builds `model` in `dtype` and predicts once."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, torch; from denseclip.clip import create_clip; "
            "from denseclip.zeroshot import ZeroShotSegmenter; "
            f"zs = ZeroShotSegmenter(create_clip({model!r}, None), {model!r}, pretrained=None, "
            f"size={size}).to(torch.{dtype}); m, _, e = {spec!r}.partition('+'); "
            f"zs.predict(np.zeros(({size}, {size}, 3), np.uint8), {CLASSES[:8]!r}, method=m, "
            "pamr_steps=10 if e else 0); "
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def interleaved(fns: dict, runs: int, warmup: int) -> dict:
    """Median seconds of each callable, runs alternating between them (the same machine load for all)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def agreement(a, b) -> tuple[float, float]:
    """(mean cosine between two results' score maps over pixels, share of pixels with the same label)."""
    cos = F.cosine_similarity(a.scores.flatten(1), b.scores.flatten(1), dim=0).mean()
    return float(cos), float((a.labels == b.labels).float().mean())


def gflop(fn) -> float:
    """GFLOPs of one call, every matmul counted: the fused attention paths (nn.MultiheadAttention's fast
    path, the CPU flash kernel) are switched to their decomposed forms, which torch's counter sees."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    return counter.get_total_flops() / 1e9


def bench_model(name: str, args: argparse.Namespace, fast: torch.dtype) -> None:
    import open_clip

    from denseclip.clip import create_clip
    from denseclip.zeroshot import METHODS as REGISTRY
    from denseclip.zeroshot import ZeroShotSegmenter

    clip = create_clip(name, None)
    slow_zs = ZeroShotSegmenter(clip, name, pretrained=None, size=args.size, proxy_weights=None)
    fast_zs = ZeroShotSegmenter(copy.deepcopy(clip), name, pretrained=None, size=args.size,
                                proxy_weights=None).to(fast)
    bare = open_clip.create_model(name, pretrained=None, force_image_size=args.size).eval()
    x = torch.randn(1, 3, args.size, args.size)

    def encode():
        with torch.no_grad():
            return bare.encode_image(x)

    img = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    names = CLASSES[:args.classes]
    tower = "resnet" if name.startswith("RN") else "vit"
    for spec in args.methods or METHODS.get(name, ["maskclip"]):
        method, _, extra = spec.partition("+")
        if tower not in REGISTRY[method].towers:
            continue
        opts = {"method": method, "pamr_steps": 10 if extra == "pamr" else 0}
        runs = {k: (lambda zs=zs, opts=opts: zs.predict(img, names, **opts))
                for k, zs in (("fp32", slow_zs), ("fast", fast_zs))}
        results = {k: fn() for k, fn in runs.items()}  # fills the text caches
        peaks = {k: peak_mib(name, d, args.size, spec) for k, d in (("fp32", "float32"),
                                                                     ("fast", str(fast)[6:]))}
        t = interleaved({"encode": encode, **runs}, args.runs, args.warmup)
        flops = gflop(runs["fp32"])
        cos, agree = agreement(results["fp32"], results["fast"])
        enc, slow, quick = t["encode"], t["fp32"], t["fast"]
        print(f"{name:<9} {spec:<14} {enc:>7.3f} {slow:>7.3f} {slow / enc:>5.2f} {quick:>7.3f} "
              f"{quick / enc:>5.2f} {slow / quick:>6.2f}x {flops:>6.1f} {flops / slow:>6.0f} "
              f"{flops / quick:>6.0f} {peaks['fp32']:>6.0f} {peaks['fast']:>6.0f} {cos:>7.5f} {agree:>6.4f}",
              flush=True)


def bench_trained(fast: torch.dtype, scenes: int) -> None:
    """The toy micro-CLIP (trained contrastively on the synthetic world): fp32 vs fast on held-out scenes."""
    from denseclip import toy
    from denseclip.data import SyntheticSegDataset
    from denseclip.metrics import SegMetric
    from denseclip.zeroshot import ZeroShotSegmenter

    clip = toy.toy_clip(progress=False)
    paths = {"fp32": ZeroShotSegmenter(clip, toy.TOY_CLIP_NAME, method="maskclip", templates="single",
                                       size=192)}
    paths["fast"] = ZeroShotSegmenter(copy.deepcopy(clip), toy.TOY_CLIP_NAME, method="maskclip",
                                      templates="single", size=192).to(fast)
    metrics = {k: SegMetric(len(toy.TOY_CLASSES)) for k in paths}
    cos, agree = [], []
    for s in SyntheticSegDataset(scenes, seed=0, size=(192, 288), offset=10**6):
        out = {k: zs.predict(s["image"], list(toy.TOY_CLASSES)) for k, zs in paths.items()}
        for k, r in out.items():
            metrics[k].update(r.labels, torch.as_tensor(s["label"]))
        c, a = agreement(out["fp32"], out["fast"])
        cos.append(c)
        agree.append(a)
    miou = {k: 100 * m.compute()["mIoU"] for k, m in metrics.items()}
    print(f"toy micro-CLIP (trained), {scenes} held-out scenes, maskclip: mean cosine {np.mean(cos):.5f} "
          f"(min {min(cos):.5f}), argmax agreement {np.mean(agree):.4f} (min {min(agree):.4f}), mIoU fp32 "
          f"{miou['fp32']:.2f} vs {str(fast).removeprefix('torch.')} {miou['fast']:.2f}")


def main() -> None:
    from denseclip.clip import fast_dtype

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ViT-B-16", "RN50", "RN101"])
    p.add_argument("--methods", nargs="+", default=None, help="default: NACLIP, ClearCLIP, PAMR / MaskCLIP")
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--scenes", type=int, default=16, help="held-out synthetic scenes for the trained model")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fast = fast_dtype("cpu")
    name = str(fast).removeprefix("torch.")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 2048^2 matmul: "
          f"{matmul_gflops(torch.float32):.0f} GFLOP/s fp32, {matmul_gflops(torch.bfloat16):.0f} bf16; "
          f"fast path: {name}")
    print(f"{args.size}x{args.size} px, {args.classes} classes (cached text), median of {args.runs}; "
          "ratios to a bare fp32 encode_image; peak: MiB of a fresh process that loads and predicts")
    head = (f"{'model':<9} {'method':<14} {'encode':>7} {'fp32 s':>7} {'ratio':>5} {name[:4] + ' s':>7} "
            f"{'ratio':>5} {'speedup':>7} {'GFLOP':>6} {'GF/s32':>6} {'GF/s' + name[:2]:>6} {'peak32':>6} "
            f"{'peak' + name[:2]:>6} {'cosine':>7} {'agree':>6}")
    print(head)
    print("-" * len(head))
    for model in args.models:
        bench_model(model, args, fast)
    bench_trained(fast, args.scenes)


if __name__ == "__main__":
    main()
