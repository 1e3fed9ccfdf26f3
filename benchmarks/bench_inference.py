"""float32 against the fast path (weights in the device's fast dtype, `denseclip.clip.fast_dtype`) for
DenseCLIP inference: time, peak memory and agreement; and the authors' forward on the same weights.

    python benchmarks/bench_inference.py                     # CPU: about 8 minutes on 2 busy cores
    python benchmarks/bench_inference.py --device cuda --runs 10
    python benchmarks/bench_inference.py --lines seg toy     # some of: seg det toy toy-det

Lines:
  seg      DenseCLIP RN50 on one 512x512 image, ADE20K's 150 classes, the authors' layout with random
           weights (their modules built, saved as their .pth and loaded with denseclip.load_checkpoint):
           ours in float32 and in the fast dtype, and the authors' modules (tests/reference_authors.py) in
           float32 on the same weights (their text encoder runs on every image; ours is cached)
  det      DenseCLIP RetinaNet RN50 (torchvision path) through `denseclip.detect` on a 1333x800 photo-like
           image, its random classifier first made as busy as a trained one (bench_detection._busy)
  toy      agreement on a trained model: DenseCLIP fine-tuned here, briefly, on the synthetic task on top
           of the toy micro-CLIP (denseclip.toy), 16 held-out scenes through `denseclip.predict`
  toy-det  the tiny RetinaNet trained here on synthetic COCO-format images, 8 held-out ones
Agreement with float32: mean per-pixel cosine of the score maps (over the classes) and agreement of the
argmax; for detections, the share of float32 detections (score >= 0.3; 0.05, the test threshold, for the
made-busy random classifier) with a same-class twin of IoU > 0.9 and their mean score difference. Random
weights understate agreement (near-tied logits): hence the trained lines. Each timed variant runs in its
own subprocess; peak memory is the peak RSS from the first warm-up call on (weights included; CUDA: peak
allocated). Times are medians, printed, never asserted: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "tests")]  # helpers, train/, the authors

RN50 = dict(layers=(3, 4, 6, 3), width=64, embed_dim=1024, input_resolution=512, text_width=512, text_heads=8,
            text_layers=12, decoder_width=256, decoder_heads=4, decoder_layers=3, neck_channels=256,
            head_channels=256)


def timed(fn, args: argparse.Namespace, sync) -> tuple[float, float, object]:
    """(median seconds, peak memory MiB, last output) of `fn()` after the warm-up calls."""
    import torch
    from bench_detection import _peak_rss_mib, _reset_peak_rss

    cuda = args.device.startswith("cuda")
    _reset_peak_rss() if not cuda else torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.no_grad():
        for _ in range(args.warmup + args.runs):
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mib()
    return statistics.median(times[args.warmup:]), peak, out


def run_child(args: argparse.Namespace, line: str, variant: str) -> dict:
    """One timed variant; its outputs go to the work folder for the parent to compare."""
    import torch
    import torch.nn.functional as F

    import denseclip

    device = torch.device(args.device)
    dtype = torch.float32 if variant in ("fp32", "authors") else denseclip.clip.fast_dtype(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    work = Path(args.work)
    if line == "det":
        from bench_detection import _busy, photo_like

        torch.manual_seed(0)
        model = denseclip.build_detector("denseclip-retinanet-rn50-coco", pretrained=False).eval()
        image = photo_like(1333, 800)
        _busy(model, image, denseclip.detect)  # in float32, so both variants have the same weights
        model = model.to(device, dtype)
        seconds, peak, r = timed(lambda: denseclip.detect(model, image, score_threshold=0.05), args, sync)
        torch.save({"boxes": r.boxes, "scores": r.scores, "labels": r.labels}, work / f"det-{variant}.pt")
        return {"median_s": seconds, "peak_mib": peak, "dtype": str(dtype).split(".")[-1]}
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)).to(device)
    if variant == "authors":
        from reference_authors import authors_resnet_denseclip

        ref = authors_resnet_denseclip(denseclip.vocab.ADE20K_CLASSES, **RN50)
        ref.load_state_dict(torch.load(work / "authors.pth")["state_dict"])
        ref = ref.eval().to(device)

        def forward():
            return ref.forward_with_score_map(x)
    else:
        model = denseclip.load_checkpoint(work / "authors.pth", device=device).to(dtype)

        def forward():
            out = model.forward_dense(x.to(dtype))
            return out["logits"], out["score_map"]
    seconds, peak, (logits, score_map) = timed(forward, args, sync)
    logits = F.interpolate(logits.float(), size=x.shape[2:], mode="bilinear", align_corners=False)
    torch.save({"labels": logits.argmax(1).cpu(), "score_map": score_map.float().cpu()},
               work / f"seg-{variant}.pt")
    return {"median_s": seconds, "peak_mib": peak, "dtype": str(dtype).split(".")[-1]}


def seg_agreement(a: dict, b: dict) -> dict:
    import torch.nn.functional as F

    return {"cosine": float(F.cosine_similarity(a["score_map"], b["score_map"], dim=1).mean()),
            "argmax": float((a["labels"] == b["labels"]).float().mean())}


def det_agreement(a, b, min_score: float = 0.3) -> dict:
    """Share of a's detections (score >= min_score) with a same-class twin in b (IoU > 0.9); score gap."""
    from torchvision.ops import box_iou

    keep = a["scores"] >= min_score
    boxes, scores, labels = a["boxes"][keep], a["scores"][keep], a["labels"][keep]
    if not len(boxes) or not len(b["boxes"]):
        return {"matched": float(not len(boxes)), "score_gap": float("nan"), "n": len(boxes)}
    iou = box_iou(boxes, b["boxes"]) * (labels[:, None] == b["labels"][None])
    best, j = iou.max(1)
    gap = (scores - b["scores"][j]).abs()[best > 0.9]
    return {"matched": float((best > 0.9).float().mean()), "n": len(boxes),
            "score_gap": float(gap.mean()) if len(gap) else float("nan")}


def write_authors_checkpoint(work: Path) -> None:
    import torch
    from reference_authors import authors_resnet_denseclip

    from denseclip.vocab import ADE20K_CLASSES

    torch.manual_seed(0)
    model = authors_resnet_denseclip(ADE20K_CLASSES, **RN50)
    torch.save({"meta": {"CLASSES": ADE20K_CLASSES}, "state_dict": model.state_dict()}, work / "authors.pth")


def trained_toy(steps: int, fast, device):
    """DenseCLIP on the toy micro-CLIP fine-tuned `steps` steps on the synthetic task; agreement of the
    fast copy on 16 held-out scenes."""
    import copy

    import torch
    import torch.nn.functional as F

    import denseclip
    from denseclip import toy
    from denseclip.data import SyntheticSegDataset, normalize_image, to_image_tensor

    torch.manual_seed(0)
    model = denseclip.build_model(toy.toy_config()).to(device)
    train = SyntheticSegDataset(256, seed=0, size=(128, 128))
    opt = torch.optim.AdamW(model.param_groups(1e-3, 1e-4), lr=1e-3)
    for step in range(steps):
        batch = [train[(8 * step + j) % len(train)] for j in range(8)]
        x = torch.cat([normalize_image(to_image_tensor(s["image"])) for s in batch]).to(device)
        y = torch.stack([torch.from_numpy(s["label"]) for s in batch]).to(device)
        loss = model(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    quick = copy.deepcopy(model).to(fast)
    rows = []
    for s in SyntheticSegDataset(16, seed=1, size=(128, 192), offset=10**6):
        a, b = denseclip.predict(model, s["image"]), denseclip.predict(quick, s["image"])
        x = normalize_image(to_image_tensor(s["image"])).to(device)
        with torch.no_grad():
            s32, s16 = model.forward_dense(x)["score_map"], quick.forward_dense(x)["score_map"].float()
        rows.append((float(F.cosine_similarity(s32, s16, dim=1).mean()),
                     float((a.labels == b.labels).float().mean()),
                     float((a.labels.numpy() == s["label"]).mean())))
    return {k: sum(r[i] for r in rows) / len(rows) for i, k in enumerate(("cosine", "argmax", "pixel_acc"))}


def trained_toy_det(steps: int, fast, device, work: Path) -> dict:
    """The tiny RetinaNet trained `steps` steps on 32 synthetic images; fast-path agreement on 8 others."""
    import copy

    import torch

    import denseclip
    from denseclip.detection import CocoDetection, collate_detection
    from train.det_synthetic import write_synthetic_coco

    torch.manual_seed(0)
    ds = CocoDetection(*write_synthetic_coco(work / "coco", "train", 32), train=True, hflip_prob=0.0)
    model = denseclip.build_detector("denseclip-retinanet-tiny", pretrained=False).to(device)
    opt = torch.optim.AdamW(model.param_groups(2e-3, 1e-4, backbone_lr_mult=1.0), lr=2e-3)
    for step in range(steps):
        images, targets = collate_detection([ds[(4 * step + j) % len(ds)] for j in range(4)])
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        loss = model([i.to(device) for i in images], targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    quick = copy.deepcopy(model).to(fast)
    val = CocoDetection(*write_synthetic_coco(work / "coco", "val", 8))
    found = []
    for i in range(len(val)):
        rgb = val.load(i)[0]
        a, b = (denseclip.detect(m, rgb, score_threshold=t) for m, t in ((model, 0.3), (quick, 0.2)))
        found.append(det_agreement(vars(a), vars(b)))
    n, gaps = sum(f["n"] for f in found), [f["score_gap"] for f in found if f["score_gap"] == f["score_gap"]]
    return {"matched": sum(f["matched"] * f["n"] for f in found) / max(n, 1), "n": n,
            "score_gap": statistics.fmean(gaps) if gaps else float("nan")}


def child(args: argparse.Namespace, line: str, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--child", line, variant, "--work", args.work, "--device", args.device,
           "--warmup", str(args.warmup), "--runs", str(args.runs)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{line}/{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", nargs="+", choices=["seg", "det", "toy", "toy-det"],
                   default=["seg", "det", "toy", "toy-det"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--toy-steps", type=int, default=150)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_child(args, *args.child)))
        return
    import torch

    import denseclip

    fast = denseclip.clip.fast_dtype(args.device)
    print(f"# device={args.device}, threads={torch.get_num_threads()}, fast dtype {fast}, median of "
          f"{args.runs} after {args.warmup} warm-up")
    print("| line | variant | median s | speed vs our fp32 | peak MiB | score-map cosine | argmax agreement"
          " |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        args.work = tmp
        for line in [ln for ln in args.lines if ln in ("seg", "det")]:
            if line == "seg":
                write_authors_checkpoint(Path(tmp))
            variants = ["fp32", "fast"] + (["authors"] if line == "seg" else [])
            rows = {v: child(args, line, v) for v in variants}
            out = {v: torch.load(Path(tmp) / f"{line}-{v}.pt") for v in variants}
            for v in variants:
                r = rows[v]
                if line == "seg":
                    agree = seg_agreement(out["fp32"], out[v])
                    cells = f"{agree['cosine']:.5f} | {agree['argmax']:.4f}"
                else:
                    agree = det_agreement(out["fp32"], out[v], min_score=0.05)  # the busy classifier's
                    cells = f"n/a | boxes matched {agree['matched']:.3f} of {agree['n']}, score gap " \
                            f"{agree['score_gap']:.4f}"
                name = {"fp32": "ours float32", "fast": f"ours {r['dtype']}", "authors": "authors float32"}[v]
                title = "DenseCLIP RN50 512x512 K=150" if line == "seg" else "RetinaNet RN50 1333x800 K=80"
                speed = rows["fp32"]["median_s"] / r["median_s"]
                print(f"| {title} | {name} | {r['median_s']:.3f} | {speed:.2f}x | {r['peak_mib']:.0f} | "
                      f"{cells} |")
        if "toy" in args.lines:
            t0 = time.perf_counter()
            a = trained_toy(args.toy_steps, fast, args.device)
            print(f"| toy DenseCLIP, trained ({args.toy_steps} steps, {time.perf_counter() - t0:.0f} s), 16 "
                  f"scenes | {str(fast).split('.')[-1]} vs float32 | | | | {a['cosine']:.5f} | "
                  f"{a['argmax']:.4f} (pixel accuracy {a['pixel_acc']:.3f}) |")
        if "toy-det" in args.lines:
            d = trained_toy_det(args.toy_steps, fast, args.device, Path(tmp))
            print(f"| tiny RetinaNet, trained ({args.toy_steps} steps), 8 images | "
                  f"{str(fast).split('.')[-1]} vs float32 | | | | n/a | boxes matched {d['matched']:.3f} of "
                  f"{d['n']}, score gap {d['score_gap']:.4f} |")


if __name__ == "__main__":
    main()
