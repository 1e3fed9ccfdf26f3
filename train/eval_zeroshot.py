"""Training-free semantic segmentation on the 8 standard benchmarks, evaluated as the peers evaluate.

    python -m train.eval_zeroshot --data-root data --methods naclip naclip+pamr sclip clearclip proxyclip
    python -m train.eval_zeroshot --data-root data --methods naclip --datasets voc21 ade20k --max-images 50
    python -m train.eval_zeroshot --tiny --data-root /tmp/synthetic      # random tiny CLIP: a wiring check

Datasets under --data-root in mmseg's layout (or --data KEY=PATH each): VOCdevkit/VOC2012 (voc21, voc20),
VOCdevkit/VOC2010 (context60, context59), coco_stuff164k (coco_object, coco_stuff), cityscapes,
ade/ADEChallengeData2016 (ade20k). Readers and class names with the peers' synonyms: train/zeroshot_data.py
(ADE20K and COCO-Stuff: denseclip.data).

Protocol (a method's peer; others use NACLIP's): CLIP ViT-B/16 (OpenAI), the 80 ImageNet templates, the
image resized (mmcv-style bilinear, no antialias) to short side 336 (ClearCLIP: 448; Cityscapes 560 for
SCLIP/NACLIP, 448 for ClearCLIP/ProxyCLIP; COCO-Stuff 448 for SCLIP/NACLIP; ADE20K 448 for ProxyCLIP),
sliding windows 224/112 (ClearCLIP 448/224, Cityscapes 224/224; ProxyCLIP 336/112, Cityscapes 224/112),
the windows' cosine maps averaged and upsampled to the label size, PAMR there for "+pamr" (10 steps,
dilations 8 and 16), then softmax(logit_scale * maps) over all queries, the max over each class's
synonyms, argmax, and pixels whose best probability is below the dataset's threshold -> background (0).
logit_scale 40 (SCLIP: 65 on VOC21, 50 on Context60 / COCO-Object; ClearCLIP 50), probability thresholds
on VOC21 / Context60 / COCO-Object: SCLIP and NACLIP 0.1 / 0.1 / 0.1, ClearCLIP 0.5 / 0.15 / 0.4,
ProxyCLIP 0.2 / 0.15 / 0.25; SCLIP's area threshold 0.1 on VOC21. Metrics: mmseg's mIoU (ignore 255).

Writes <out>/results.json (every metric, the protocol, timing) and <out>/results.md (method x dataset).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from denseclip.checkpoints import write_json
from denseclip.data import ADE20KDataset, COCOStuffDataset
from denseclip.metrics import SegMetric
from denseclip.zeroshot import (
    BACKGROUND,
    METHODS,
    LabelRule,
    PredictOptions,
    ZeroShotSegmenter,
    build_queries,
    labels_from_maps,
    upsample,
)

from .zeroshot_data import (
    CityscapesDataset,
    COCOObjectDataset,
    PascalContextDataset,
    PascalVOCDataset,
    peer_class_names,
)

ORDER = ("voc21", "context60", "coco_object", "voc20", "cityscapes", "context59", "ade20k", "coco_stuff")
TITLES = {"voc21": "VOC21", "context60": "PC60", "coco_object": "Object", "voc20": "VOC20",
          "cityscapes": "City", "context59": "PC59", "ade20k": "ADE", "coco_stuff": "Stuff"}
BENCHMARKS = {  # key -> (folder under --data-root, reader)
    "voc21": ("VOCdevkit/VOC2012", lambda root: PascalVOCDataset(root, "val", background=True)),
    "voc20": ("VOCdevkit/VOC2012", lambda root: PascalVOCDataset(root, "val", background=False)),
    "context60": ("VOCdevkit/VOC2010", lambda root: PascalContextDataset(root, "val", background=True)),
    "context59": ("VOCdevkit/VOC2010", lambda root: PascalContextDataset(root, "val", background=False)),
    "coco_object": ("coco_stuff164k", lambda root: COCOObjectDataset(root, "val2017")),
    "coco_stuff": ("coco_stuff164k", lambda root: COCOStuffDataset(root, "val2017")),
    "cityscapes": ("cityscapes", lambda root: CityscapesDataset(root, "val")),
    "ade20k": ("ade/ADEChallengeData2016", lambda root: ADE20KDataset(root, "validation")),
}
WITH_BACKGROUND = ("voc21", "context60", "coco_object")  # class 0 is "background": thresholds label it


@dataclass(frozen=True)
class Protocol:
    short_side: int = 336
    crop: int = 224
    stride: int = 112
    logit_scale: float = 40.0
    prob_threshold: float = 0.0
    area_threshold: float | None = None


def protocol(peer: str, dataset: str) -> Protocol:
    """The peer's released config for one dataset (see the module doc)."""
    thresholds = {"sclip": (0.1, 0.1, 0.1), "naclip": (0.1, 0.1, 0.1), "clearclip": (0.5, 0.15, 0.4),
                  "proxyclip": (0.2, 0.15, 0.25)}[peer]
    p = Protocol(prob_threshold=dict(zip(WITH_BACKGROUND, thresholds)).get(dataset, 0.0))
    if peer in ("sclip", "naclip"):
        p = replace(p, short_side={"cityscapes": 560, "coco_stuff": 448}.get(dataset, 336))
        if peer == "sclip":
            scale = {"voc21": 65.0, "context60": 50.0, "coco_object": 50.0}.get(dataset, 40.0)
            p = replace(p, logit_scale=scale, area_threshold=0.1 if dataset == "voc21" else None)
    elif peer == "clearclip":
        p = replace(p, short_side=448, crop=448, stride=224, logit_scale=50.0)
        p = replace(p, crop=224, stride=224) if dataset == "cityscapes" else p
    else:  # proxyclip
        p = replace(p, short_side=448 if dataset in ("ade20k", "cityscapes") else 336, crop=336, stride=112)
        p = replace(p, crop=224, stride=112) if dataset == "cityscapes" else p
    return p


def peer_of(method: str) -> str:
    return method if method in ("sclip", "naclip", "clearclip", "proxyclip") else "naclip"


def _identity(sample):
    return sample


@torch.no_grad()
def segment(zs: ZeroShotSegmenter, rgb, text: torch.Tensor, rule: LabelRule,
            opts: PredictOptions) -> torch.Tensor:
    """One image (H, W, 3) uint8 -> labels (H, W) by the protocol (BACKGROUND where thresholded): the
    working image (mmcv-style resize, no antialias), sliding windows, the maps upsampled to the label size
    (and refined there with PAMR, as SCLIP and NACLIP), then the labels."""
    h, w = rgb.shape[:2]
    x = zs.working_image(rgb, opts.size, opts.max_long_side, antialias=False)
    maps, extent = zs.image_maps(x, text, opts)
    full = zs.refine(x, maps, extent, (h, w), opts) if opts.pamr_steps else upsample(maps, (h, w), extent)
    return labels_from_maps(full, (h, w), (h, w), rule)


def evaluate(zs: ZeroShotSegmenter, opts: PredictOptions, dataset, key: str, peer: str, args) -> dict:
    """mmseg's metrics of one method (`opts`) on one dataset, and the protocol and time it took."""
    from tqdm import tqdm

    p = protocol(peer, key)
    if args.short_side:
        p = replace(p, short_side=args.short_side)
    if args.window:
        p = replace(p, crop=args.window[0], stride=args.window[1])
    opts = opts.replace(size=p.short_side, max_long_side=2048, slide=(p.crop, p.stride))
    queries = peer_class_names(peer, key)
    cq = build_queries(dict(zip(dataset.class_names, queries)))
    text = zs.encode_text(cq.texts, opts.templates)[list(cq.text_index)]
    rule = LabelRule(cq.num_classes, cq.class_tensor(), p.prob_threshold or None, "prob", p.logit_scale,
                     p.area_threshold, background_class=0 if key in WITH_BACKGROUND else None)
    metric = SegMetric(dataset.num_classes, ignore_index=dataset.ignore_index,
                       class_names=dataset.class_names)
    n = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=None,
                                         num_workers=args.workers, collate_fn=_identity)
    t0 = time.perf_counter()
    for sample in tqdm(loader, total=n, desc=f"{opts.method}{'+pamr' if opts.pamr_steps else ''} {key}",
                       disable=args.quiet, file=sys.stderr, dynamic_ncols=True, mininterval=2.0):
        labels = segment(zs, sample["image"], text, rule, opts).cpu()
        labels[labels == BACKGROUND] = 0 if key in WITH_BACKGROUND else dataset.ignore_index
        metric.update(labels, torch.as_tensor(sample["label"]))
    res = metric.compute()
    res.update(num_images=n, seconds=time.perf_counter() - t0, protocol={"peer": peer, **asdict(p)})
    return res


def build_clip(args):
    from denseclip.clip import create_clip

    if args.tiny:
        from denseclip.config import TINY_VIT_ARCH

        torch.manual_seed(0)
        return create_clip("tiny", None, arch=TINY_VIT_ARCH), "tiny"
    return create_clip(args.model, args.pretrained), args.model  # QuickGELU as open_clip's config says


def tiny_proxy():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                             dynamic_img_size=True).eval()


def method_options(spec: str, args) -> PredictOptions:
    """'naclip' or 'naclip+pamr' -> the options of that method (the peers' 80 templates by default)."""
    method, _, extra = spec.partition("+")
    if extra not in ("", "pamr") or method not in METHODS:
        raise SystemExit(f"unknown method {spec!r}: choose from {sorted(METHODS)}, optionally with '+pamr'")
    return PredictOptions(method=method, pamr_steps=10 if extra else 0, templates=args.templates)


def table(results: dict, methods: list[str], datasets: list[str]) -> str:
    """Markdown: one row per method, mIoU (%) per dataset in the peers' order and their mean."""
    cols = [d for d in ORDER if d in datasets]
    lines = ["| Method | " + " | ".join(TITLES[d] for d in cols) + " | Avg |",
             "|---" * (len(cols) + 2) + "|"]
    for m in methods:
        vals = [100 * results[m][d]["mIoU"] for d in cols]
        avg = sum(vals) / len(vals) if vals else float("nan")
        lines.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {avg:.2f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.eval_zeroshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="data", help="folder holding the datasets in mmseg's layout")
    p.add_argument("--data", nargs="*", default=[], metavar="KEY=PATH", help="a dataset's own folder")
    p.add_argument("--datasets", nargs="+", default=list(ORDER), choices=list(ORDER))
    p.add_argument("--methods", nargs="+", default=["naclip"],
                   help=f"of {sorted(METHODS)}; '+pamr' adds PAMR")
    p.add_argument("--protocol", default="auto",
                   choices=["auto", "sclip", "naclip", "clearclip", "proxyclip"],
                   help="whose sizes, windows, thresholds, names (auto: the method's peer, else NACLIP's)")
    p.add_argument("--short-side", type=int, default=None,
                   help="override the protocol's resize (quick checks)")
    p.add_argument("--window", type=int, nargs=2, default=None, metavar=("CROP", "STRIDE"),
                   help="override the protocol's sliding windows")
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--pretrained", default="openai")
    p.add_argument("--templates", default="imagenet",
                   help="prompt templates (the peers: the 80 ImageNet ones)")
    p.add_argument("--proxy-model", default="vit_base_patch8_224.dino", help="ProxyCLIP's proxy (a timm ViT)")
    p.add_argument("--proxy-weights", default="timm",
                   help="'timm' (weights folder or the Hub) or a local file")
    p.add_argument("--max-images", type=int, default=None, help="the first N images of each dataset")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the weights' dtype (bfloat16 / float16: faster on GPUs; the scores stay float32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--out", default="work_dirs/zeroshot", help="folder for results.json and results.md")
    p.add_argument("--tiny", action="store_true",
                   help="random tiny CLIP and proxy, offline (checks the wiring)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.tiny:
        args.pretrained = None
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    folders = {k: Path(args.data_root) / sub for k, (sub, _) in BENCHMARKS.items()}
    for item in args.data:
        key, _, path = item.partition("=")
        if key not in BENCHMARKS or not path:
            raise SystemExit(f"--data takes KEY=PATH with KEY one of {list(BENCHMARKS)}, got {item!r}")
        folders[key] = Path(path)
    datasets = {k: BENCHMARKS[k][1](folders[k]) for k in args.datasets}  # a missing one fails before any work
    clip, name = build_clip(args)
    proxy = tiny_proxy() if args.tiny and any(m.startswith("proxyclip") for m in args.methods) else None
    zs = ZeroShotSegmenter(clip, name, pretrained=args.pretrained, proxy=proxy, proxy_model=args.proxy_model,
                           proxy_weights=args.proxy_weights).to(args.device, getattr(torch, args.dtype))
    results: dict = {}
    for spec in args.methods:  # one CLIP tower, every method
        opts = method_options(spec, args)
        print(zs.describe(opts), file=sys.stderr)
        peer = peer_of(opts.method) if args.protocol == "auto" else args.protocol
        results[spec] = {k: evaluate(zs, opts, ds, k, peer, args) for k, ds in datasets.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = table(results, args.methods, args.datasets)
    note = f"{name} ({args.pretrained})"
    if args.tiny:
        note = "random tiny CLIP (--tiny): numbers are meaningless"
    (out / "results.md").write_text(f"mIoU (%), {note}, max_images={args.max_images}\n\n{md}\n", "utf-8")
    write_json(out / "results.json", {"args": vars(args), "results": results})  # NaN (class unseen): null
    print(md)
    return results


if __name__ == "__main__":
    main()
