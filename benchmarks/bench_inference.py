"""Latency and peak memory of whole-image inference, with and without the text-embedding cache.

    python benchmarks/bench_inference.py                    # RN50 preset, 512x512, CPU (random weights)
    python benchmarks/bench_inference.py --device cuda --amp bf16 --batch 8

Each variant runs in its own subprocess so that peak memory (max RSS on CPU, max allocated on CUDA)
belongs to that variant alone. Without the cache the CLIP text encoder runs for all K classes on
every image, which is what the original implementation does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def run_one(args: argparse.Namespace, cached: bool) -> dict:
    import resource

    import torch

    import denseclip

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = denseclip.build_model(args.preset, pretrained=False).eval().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        x = x.to(memory_format=torch.channels_last)
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    def step():
        if not cached:
            model.prompting.clear_text_cache()
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"cached": cached, "median_s": statistics.median(times), "min_s": min(times), "peak_mib": peak,
            "threads": torch.get_num_threads(), "classes": model.cfg.num_classes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="denseclip-rn50-ade20k")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--child", choices=["cached", "uncached"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_one(args, args.child == "cached")))
        return
    rows = []
    for variant in ("uncached", "cached"):
        cmd = [sys.executable, __file__, "--child", variant] + [a for a in sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    un, ca = rows
    print(f"# {args.preset}, {args.batch}x3x{args.size}x{args.size}, device={args.device}, amp={args.amp}, "
          f"channels_last={args.channels_last}, threads={ca['threads']}, K={ca['classes']}, random weights")
    print(f"{'text cache':<12}{'median s/batch':>16}{'min s':>10}{'peak MiB':>11}")
    for r in rows:
        state = "on" if r["cached"] else "off"
        print(f"{state:<12}{r['median_s']:>16.3f}{r['min_s']:>10.3f}{r['peak_mib']:>11.0f}")
    print(f"speed-up from the cache: {un['median_s'] / ca['median_s']:.2f}x")


if __name__ == "__main__":
    main()
