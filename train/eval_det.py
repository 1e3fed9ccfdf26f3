"""Evaluate a DenseCLIP detector with COCOeval: box AP (and mask AP for Mask R-CNN) -> eval_metrics.json.
From the repository root:

    python -m train.eval_det --checkpoint work_dirs/ret50/final \
        --config train/configs/det_denseclip_retinanet_rn50_coco.yaml
    torchrun --nproc_per_node 8 -m train.eval_det --checkpoint ... --config ...      # images split over GPUs
    python -m train.eval_det --checkpoint user/denseclip-retinanet-rn50-coco --config ... --data.root /coco

The data comes from the config's `data:` section (val_images / val_ann; a run's config.yaml works, and
`--data.key value` overrides as in train_det). The model and its test settings (image size, score
threshold, NMS, detections per image) come from the checkpoint's config.
"""

from __future__ import annotations

if not __package__:  # run as a file: the package's imports cannot work
    raise SystemExit("run it as a module from the repository root: python -m train.eval_det --help")

import time

import denseclip

from .det_data import SECTIONS, DetDataConfig, val_loader
from .det_eval import evaluate_detector
from .engine import barrier, eval_parser, evaluate_main


def parser():
    p = eval_parser(__doc__, "a .safetensors file, a checkpoint folder, or a Hub repo id",
                    "YAML whose data: section names the validation images and annotations",
                    "do not check that the image files exist")
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    return p


def evaluate(cfg: dict, args, env) -> tuple[dict, str]:
    data = DetDataConfig.from_dict(cfg["data"], "data")
    if not data.val_images or not data.val_ann:
        raise ValueError("no validation data: set data.val_images and data.val_ann "
                         "(or pass --data.val_ann PATH)")
    model = denseclip.load_detector(args.checkpoint, device=env.device)
    if env.is_main:
        data.write_synthetic(cfg["train"].seed)
    barrier(env)  # the other ranks read what rank 0 wrote
    dataset = data.val_dataset(model.cfg.with_masks, model.class_names)
    if env.is_main and not args.skip_validate:
        dataset.validate()
    t0 = time.perf_counter()
    loader = val_loader(dataset, env, args.workers, args.max_images, args.batch_size)
    metrics = evaluate_detector(model, loader, dataset, env.device, progress=env.is_main)
    metrics.update(model=model.cfg.name, annotations=str(dataset.ann_file), seconds=time.perf_counter() - t0)
    ap = "  ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items() if k.startswith(("bbox_", "segm_")))
    return metrics, f"{metrics.get('summary', '')}\n{ap}"


def main(argv: list[str] | None = None) -> dict:
    return evaluate_main(parser(), SECTIONS, evaluate, argv)


if __name__ == "__main__":
    main()
