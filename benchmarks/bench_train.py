"""Training-step throughput (images/s) and peak memory, AMP off and on.

    python benchmarks/bench_train.py                 # RN50 DenseCLIP, 2 x 512 x 512, CPU, fp32 vs bf16
    python benchmarks/bench_train.py --device cuda --batch 8 --amp none bf16 fp16 --channels-last

A step is what train.train_seg does per micro-batch: forward with labels (seg + aux loss), backward,
AdamW step over the recipe's parameter groups (backbone lr x0.1, text encoder frozen). Random CLIP
weights (no download; speed does not depend on the values). Each variant runs in its own subprocess
so peak memory (max RSS on CPU, max allocated on CUDA) is that variant's alone. On CPU fp16 autocast
is skipped unless asked for: it is extremely slow there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def run_one(args: argparse.Namespace, amp: str) -> dict:
    import resource

    import torch

    import denseclip

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = denseclip.build_model(args.preset, pretrained=False).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.param_groups(1e-4, 1e-4), lr=1e-4)
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    k = model.cfg.num_classes
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, k, (args.batch, args.size, args.size), device=device)
    y[:, : args.size // 8] = 255  # some ignored pixels, as after padding

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x, y)["loss"]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    med = statistics.median(times)
    return {"amp": amp, "median_s": med, "min_s": min(times), "images_per_s": args.batch / med,
            "peak_mib": peak, "threads": torch.get_num_threads(), "classes": k, "loss": loss,
            "trainable_m": sum(p.numel() for g in opt.param_groups for p in g["params"]) / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="denseclip-rn50-ade20k")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--amp", nargs="+", choices=["none", "bf16", "fp16"], default=None,
                   help="variants to run (default: none bf16 on CPU, none bf16 fp16 on CUDA)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--child", choices=["none", "bf16", "fp16"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        print(json.dumps(run_one(args, args.child)))
        return
    variants = args.amp or (["none", "bf16", "fp16"] if args.device.startswith("cuda") else ["none", "bf16"])
    rows = []
    for amp in variants:
        passthrough = [a for a in sys.argv[1:]]
        if "--amp" in passthrough:  # the child gets one variant
            i = passthrough.index("--amp")
            j = i + 1
            while j < len(passthrough) and not passthrough[j].startswith("--"):
                j += 1
            passthrough = passthrough[:i] + passthrough[j:]
        cmd = [sys.executable, __file__, "--child", amp, "--device", args.device, *passthrough]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"variant amp={amp} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    if not rows:
        sys.exit(1)
    r0 = rows[0]
    print(f"# train step of {args.preset}: batch {args.batch} x 3 x {args.size} x {args.size}, "
          f"device={args.device}, channels_last={args.channels_last}, threads={r0['threads']}, "
          f"K={r0['classes']}, {r0['trainable_m']:.1f} M trainable params, random weights, "
          f"{args.steps} timed steps")
    print(f"{'amp':<6}{'median s/step':>15}{'min s':>9}{'images/s':>10}{'peak MiB':>10}")
    for r in rows:
        print(f"{r['amp']:<6}{r['median_s']:>15.3f}{r['min_s']:>9.3f}{r['images_per_s']:>10.2f}{r['peak_mib']:>10.0f}")


if __name__ == "__main__":
    main()
