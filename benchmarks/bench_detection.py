"""Latency and peak memory of `denseclip.detect` on one COCO-size image, for the authors' released layouts.

    python benchmarks/bench_detection.py                  # 4 layouts x 2 test paths, CPU: ~9 min on 2 cores
    python benchmarks/bench_detection.py --kinds retinanet-rn50 --runs 5 --paths mmdet

The four layouts are those of the authors' files (retinanet / mask_rcnn _denseclip_ r50 / r101 _fpn_1x_coco):
CLIP RN50 / RN101 image tower at 1344 with the cropped positional grid, CLIP's 12-layer 512-wide text
encoder, 8 contexts, the 3-layer 256-wide context decoder, FPN 256, 80 COCO classes. The model is built
with `denseclip.build_detector(preset, pretrained=False)`: the same modules and tensor shapes that
`denseclip.load_detector(their .pth)` builds (it reads this architecture off their tensors; for all
four, the state dicts have the same keys and shapes), with random weights, so nothing is downloaded.
A random classifier scores every box below the 0.05 test threshold, which skips NMS and the mask head
as a trained model on a photo never does; so its logits are first spread and shifted until about 2000
(box, class) pairs of the image score above 0.05 (the "dets" column: detections returned, at most 100,
each with a mask for Mask R-CNN).

Two test paths: "mmdet" (`cfg.mmdet_compat=True`, what `load_detector` sets: mmdetection 2.17's order
and conventions) and "torchvision" (our own trained models). The image is a random but photo-like
1333 x 800 uint8 picture (smooth colour fields, shapes, noise). Times are the median of `--runs` calls of
`denseclip.detect` after `--warmup` calls, float32, no grad; the text embeddings are computed once
before and cached, as in any evaluation. Each variant runs in its own subprocess; peak RSS is the
process's peak resident memory from the first warm-up call on (weights included; Linux), or over its
whole life where the peak cannot be reset. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

LAYOUTS = {  # the authors' file -> our preset with the same architecture
    "retinanet-rn50": "denseclip-retinanet-rn50-coco",  # retinanet_denseclip_r50_fpn_1x_coco.pth
    "retinanet-rn101": "denseclip-retinanet-rn101-coco",  # retinanet_denseclip_r101_fpn_1x_coco.pth
    "maskrcnn-rn50": "denseclip-maskrcnn-rn50-coco",  # mask_rcnn_denseclip_r50_fpn_1x_coco.pth
    "maskrcnn-rn101": "denseclip-maskrcnn-rn101-coco",  # mask_rcnn_denseclip_r101_fpn_1x_coco.pth
}
PATHS = {"mmdet": True, "torchvision": False}


def photo_like(width: int, height: int, seed: int = 0):
    """(H, W, 3) uint8: smooth colour fields, a few filled shapes and sensor-like noise."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1, y1 = x0 + int(rng.integers(30, width // 3)), y0 + int(rng.integers(30, height // 3))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)
    arr += rng.normal(0, 6, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _busy(model, image, detect, candidates: int = 2000) -> int:
    """Make the random classifier behave like a trained one on a busy photo: class logits spread by 2 (at
    init they are all about equal, and Mask R-CNN's softmax over 81 then never reaches the 0.05 test
    threshold), biases shifted so that about `candidates` (box, class) pairs of the image score above
    0.05. Returns the number of detections then."""
    import math

    import torch

    retina = model.cfg.detector == "retinanet"
    det = model.detector
    layer = det.head.classification_head.cls_logits if retina else det.roi_heads.box_predictor.cls_score
    seen = []
    hook = layer.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    detect(model, image, score_threshold=0.0)
    hook.remove()
    with torch.no_grad():
        if retina:  # (B, A * K, H, W) per level; sigmoid scores
            logits = torch.cat([(o - layer.bias.view(1, -1, 1, 1)).flatten() for o in seen])
        else:  # (R, K + 1), background first; softmax
            logits = torch.cat(seen) - layer.bias
        gain = 2.0 / logits.std()
        layer.weight *= gain
        logits *= gain
        if retina:  # the `candidates`-th best logit moves to logit(0.05)
            layer.bias.fill_(math.log(0.05 / 0.95) - logits.topk(min(candidates, len(logits))).values[-1])
        else:  # the foreground logits rise together over the background's
            layer.bias.zero_()
            for shift in torch.arange(-10.0, 30.0, 0.25):
                bias = torch.cat([logits.new_zeros(1), logits.new_full((logits.shape[1] - 1,), shift)])
                if (logits + bias).softmax(-1)[:, 1:].gt(0.05).sum() >= candidates:
                    break
            layer.bias.copy_(bias)
    return len(detect(model, image, score_threshold=0.0))


def run_one(args: argparse.Namespace, layout: str, path: str) -> dict:
    import torch

    import denseclip

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    preset = LAYOUTS.get(layout, layout)  # a preset name works too (e.g. a tiny one for a smoke test)
    t0 = time.perf_counter()
    model = denseclip.build_detector(preset, pretrained=False, mmdet_compat=PATHS[path]).eval()
    build_s = time.perf_counter() - t0
    image = photo_like(args.width, args.height)
    dets = _busy(model, image, denseclip.detect)  # also computes and caches the text embeddings
    reset = _reset_peak_rss()
    for _ in range(args.warmup):
        denseclip.detect(model, image, score_threshold=0.0)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        r = denseclip.detect(model, image, score_threshold=0.0)
        times.append(time.perf_counter() - t0)
    return {"layout": layout, "path": path, "median_s": statistics.median(times), "min_s": min(times),
            "peak_mib": _peak_rss_mib(), "peak_from_warmup": reset, "dets": len(r), "dets_calibration": dets,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "build_s": build_s,
            "threads": torch.get_num_threads(), "classes": model.cfg.num_classes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=list(LAYOUTS), metavar="LAYOUT",
                   help=f"layouts ({', '.join(LAYOUTS)}) or detection preset names")
    p.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS),
                   help="test paths: mmdet (cfg.mmdet_compat=True, as load_detector) and/or torchvision")
    p.add_argument("--width", type=int, default=1333)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--child", nargs=2, metavar=("LAYOUT", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_one(args, *args.child)))
        return
    common = ["--width", str(args.width), "--height", str(args.height), "--threads", str(args.threads),
              "--warmup", str(args.warmup), "--runs", str(args.runs)]
    rows = []
    for layout in args.kinds:
        for path in args.paths:
            cmd = [sys.executable, __file__, "--child", layout, path] + common
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
            rows.append(json.loads(out[-1]))
    print(f"# denseclip.detect on one {args.width}x{args.height} photo-like image, CPU float32, "
          f"threads={rows[0]['threads']}, random weights, text embeddings cached, median of {args.runs} "
          f"after {args.warmup} warm-up")
    print()
    print("| layout | test path | params (M) | dets | median s | min s | peak RSS (MiB) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        path = "mmdet 2.17 (`mmdet_compat=True`)" if r["path"] == "mmdet" else "torchvision"
        peak = f"{r['peak_mib']:.0f}" + ("" if r["peak_from_warmup"] else " (incl. build)")
        print(f"| {r['layout']} | {path} | {r['params_m']:.1f} | {r['dets']} | {r['median_s']:.2f} "
              f"| {r['min_s']:.2f} | {peak} |")


if __name__ == "__main__":
    main()
