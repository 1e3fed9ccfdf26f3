"""Train a DenseCLIP (or CLIP baseline) RetinaNet / Mask R-CNN on COCO-format data from a YAML config.
From the repository root:

    python -m train.train_det --config train/configs/det_denseclip_retinanet_rn50_coco.yaml \
        --work-dir work_dirs/ret50
    torchrun --nproc_per_node 8 -m train.train_det --config ...         # 8 GPUs x 2 images = total batch 16
    python -m train.train_det --config ... --schedule.epochs 1 --train.batch_size 1   # dotted overrides
    python -m train.train_det --config ... --work-dir work_dirs/ret50 --resume        # continue a killed run

The machinery is the engine's (train/engine), as for segmentation. Detection adds a `schedule:` section:
the mmdet 1x schedule in epochs, turned into iterations here (train.max_iters = epochs x ceil(images /
total_batch); the engine's step schedule, train.lr_steps, multiplies the lr by `gamma` after each epoch
in `steps`). Leave `train.schedule: constant` in the YAML; the run's config.yaml says "step".
"""

from __future__ import annotations

if not __package__:  # run as a file: the package's imports cannot work
    raise SystemExit("run it as a module from the repository root: python -m train.train_det --help")

import math

import torch

from denseclip.config import DetectionConfig
from denseclip.detection import build_detector, collate_detection

from .det_data import SECTIONS, DetDataConfig, FlipTransform, RawSamples, ScheduleConfig, val_loader
from .det_eval import evaluate_detector
from .engine import DistEnv, Task, TrainRun, train_task


class DetTask(Task):
    """Detection: images [(3, H, W)], targets [{"boxes", "labels"(, "masks")}] -> {"loss", the detector's
    terms, "loss_aux"}."""

    sections = SECTIONS
    metric = "bbox_AP"
    val_keys = ("bbox_", "segm_")
    validate_help = "skip the image-file check"
    cudnn_benchmark = False  # image sizes vary
    collate_fn = staticmethod(collate_detection)

    def __init__(self, cfg: dict, env: DistEnv):
        super().__init__(cfg, env)
        train = self.cfg["train"]
        if train.schedule not in ("constant", "step"):  # "step": a run's own config.yaml
            raise ValueError("detection schedules come from the schedule: section; "
                             "set train.schedule: constant")
        if train.compile or train.channels_last:
            raise ValueError("train.compile and train.channels_last are not supported for detection; "
                             "set them false")
        self.model_section = cfg["model"]
        self.cfg["model"] = DetectionConfig.from_dict(cfg["model"], "model")
        self.cfg["data"] = data = DetDataConfig.from_dict(cfg["data"], "data")
        self.cfg["schedule"] = ScheduleConfig.from_dict(cfg["schedule"], "schedule")
        if env.is_main:  # rank 0 writes the synthetic set; the error broadcast after __init__ waits for it
            data.write_synthetic(train.seed)

    def load(self) -> None:
        data, model, sched = self.cfg["data"], self.cfg["model"], self.cfg["schedule"]
        train_set = data.train_dataset(model.with_masks)
        if "class_names" not in self.model_section:
            self.cfg["model"] = model.replace(class_names=train_set.class_names)
        elif tuple(model.class_names) != train_set.class_names:
            raise ValueError(f"model.class_names differ from the categories of {train_set.ann_file}")
        self.val_set = data.val_dataset(model.with_masks)
        self.train_set, self.transform = RawSamples(train_set), FlipTransform(data.hflip_prob)
        per_epoch = self.iters_per_epoch = math.ceil(len(train_set) / self.cfg["train"].total_batch)
        self.cfg["train"] = self.cfg["train"].replace(max_iters=sched.epochs * per_epoch, schedule="step",
                                                      lr_steps=[s * per_epoch for s in sched.steps],
                                                      lr_gamma=sched.gamma)

    def check_data(self) -> None:
        for ds in (self.train_set.ds, self.val_set):
            if ds is not None:
                ds.validate()

    def build_model(self, pretrained: bool) -> torch.nn.Module:
        # sync_bn is off in the presets: the authors' CLIP ResNet uses plain BatchNorm
        return build_detector(self.cfg["model"], pretrained=pretrained)

    def describe(self) -> str:
        sched, train = self.cfg["schedule"], self.cfg["train"]
        return (f"{sched.epochs} epochs x {self.iters_per_epoch} iterations, lr steps at "
                f"{list(train.lr_steps)}")

    def step(self, run: TrainRun, batch) -> dict[str, torch.Tensor]:
        device = run.env.device
        images = [im.to(device, non_blocking=True) for im in batch[0]]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch[1]]
        return run.train_model(images, targets)

    def evaluate(self, run: TrainRun) -> dict:
        """COCO box (and mask) AP on the validation set (the numbers on rank 0 only)."""
        loader = val_loader(self.val_set, run.env, min(run.cfg.workers, 2), run.cfg.eval_max_images)
        return evaluate_detector(run.model, loader, self.val_set, run.env.device)


def main(argv: list[str] | None = None) -> dict:
    return train_task(DetTask, argv, __doc__)


if __name__ == "__main__":
    main()
