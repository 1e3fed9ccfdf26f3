"""Evaluate a DenseCLIP detector with COCOeval: box AP (and mask AP for Mask R-CNN), written to metrics.json.

    python -m train.eval_det --checkpoint work_dirs/ret50/final --config train/configs/det_denseclip_retinanet_rn50_coco.yaml
    torchrun --nproc_per_node 8 -m train.eval_det --checkpoint ... --config ...       # images split over GPUs
    python -m train.eval_det --checkpoint user/denseclip-retinanet-rn50-coco --config ... --data.root /data/coco

The data comes from the config's `data:` section (val_images / val_ann; a run's config.yaml works, and
`--data.key value` overrides as in train_det.py). The model and its test settings (image size, score
threshold, NMS, detections per image) come from the checkpoint's config.
"""

from __future__ import annotations

if not __package__:  # run as a file: the package's imports cannot work
    raise SystemExit("run it as a module from the repository root: python -m train.eval_det --help")

import time
from pathlib import Path

from denseclip.detection import CocoDetection, evaluate_detector, load_detector

from .engine import (
    distributed_session,
    eval_parser,
    load_run_config,
    report_metrics,
)
from .train_det import SECTIONS, DetDataConfig, build_datasets, val_loader


def parse_args(argv=None):
    p = eval_parser(__doc__, "a .safetensors file, a checkpoint folder, or a Hub repo id",
                    "YAML whose data: section names the validation images and annotations",
                    "do not check that the image files exist")
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    return p.parse_known_args(argv)


def main(argv=None) -> dict:
    args, overrides = parse_args(argv)
    cfg = load_run_config(args.config, overrides, sections=SECTIONS)
    data = DetDataConfig.from_dict(cfg["data"], "data")
    if not data.val_images or not data.val_ann:
        raise ValueError("no validation data: set data.val_images and data.val_ann (or pass --data.val_ann PATH)")
    with distributed_session(args.device) as env:
        model = load_detector(args.checkpoint, device=env.device)
        if data.synthetic and env.is_main:
            build_datasets(data, model.cfg.with_masks, cfg["train"].seed)
        root = Path(data.root)
        dataset = CocoDetection(root / data.val_images, root / data.val_ann, with_masks=model.cfg.with_masks,
                                class_names=model.class_names)
        if env.is_main and not args.skip_validate:
            dataset.validate()
        t0 = time.perf_counter()
        loader = val_loader(dataset, env, args.workers, args.max_images, args.batch_size)
        metrics = evaluate_detector(model, loader, dataset, env.device, progress=env.is_main)
        if env.is_main:
            metrics.update(checkpoint=str(args.checkpoint), model=model.cfg.name, annotations=str(dataset.ann_file),
                           seconds=time.perf_counter() - t0)
            ap = "  ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items() if k.startswith(("bbox_", "segm_")))
            report_metrics(metrics, args.checkpoint, args.out, f"{metrics['summary']}\n{ap}")
        return metrics


if __name__ == "__main__":
    main()
