"""Train a DenseCLIP (or CLIP + FPN) segmentor from a YAML config. From the repository root:

    python -m train.train_seg --config train/configs/denseclip_rn50_ade20k.yaml --work-dir work_dirs/rn50
    torchrun --nproc_per_node 8 -m train.train_seg --config ... --work-dir ...      # 8 GPUs x 4 = batch 32
    python -m train.train_seg --config ... --train.max_iters 100 --model.prompt.num_contexts 4   # overrides
    python -m train.train_seg --config ... --work-dir work_dirs/rn50 --resume         # continue a killed run

Any `--section.key value` not listed below overrides the YAML. On fewer GPUs the same total batch
(train.total_batch) is reached by gradient accumulation, computed from the per-GPU batch and the
world size. Everything that can fail (dataset files, weights, the Hub) is checked before iteration 0.
"""

from __future__ import annotations

if not __package__:  # run as a file: the package's imports cannot work
    raise SystemExit("run it as a module from the repository root: python -m train.train_seg --help")

import torch

import denseclip
from denseclip.config import DenseCLIPConfig

from .engine import DistEnv, Task, TrainRun, train_task
from .seg_data import DataConfig, build_dataset, build_train_transform, resolve_class_names


class SegTask(Task):
    """Semantic segmentation: images (b, 3, c, c) and labels (b, c, c) -> {"loss", "loss_seg", "loss_aux"}."""

    metric = "mIoU"
    val_keys = ("mIoU", "mAcc", "aAcc")
    validate_help = "skip the dataset file checks (huge datasets)"

    def __init__(self, cfg: dict, env: DistEnv):
        super().__init__(cfg, env)
        self.model_section = cfg["model"]
        self.cfg["data"] = DataConfig.from_dict(cfg["data"], "data")

    def load(self) -> None:
        data, seed = self.cfg["data"], self.cfg["train"].seed
        train_split, val_split = data.splits()
        self.train_set = build_dataset(data, train_split, seed)
        self.val_set = build_dataset(data, val_split, seed) if val_split else None
        model = DenseCLIPConfig.from_dict(self.model_section, "model")
        self.cfg["model"] = resolve_class_names(model, self.train_set, "class_names" in self.model_section)
        self.transform = build_train_transform(data, self.cfg["model"].ignore_index)

    def check_data(self) -> None:
        for ds in (self.train_set, self.val_set):
            if ds is not None:
                ds.validate(self.cfg["data"].validate)

    def build_model(self, pretrained: bool) -> torch.nn.Module:
        return denseclip.build_model(self.cfg["model"], pretrained=pretrained)

    def describe(self) -> str:
        return self.train_set.name

    def step(self, run: TrainRun, batch) -> dict[str, torch.Tensor]:
        images, labels = (t.to(run.env.device, non_blocking=True) for t in batch)
        if run.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return run.train_model(images, labels)

    def evaluate(self, run: TrainRun) -> dict:
        """mIoU & co. on the validation set, the images split over the ranks."""
        cfg, env = run.cfg, run.env
        return denseclip.evaluate(run.model, self.val_set, run.model.cfg.test,
                                  shard=(env.rank, env.world_size), amp_dtype=run.amp.dtype,
                                  max_images=cfg.eval_max_images, workers=min(cfg.workers, 2), progress=False)


def main(argv: list[str] | None = None) -> dict:
    return train_task(SegTask, argv, __doc__)


if __name__ == "__main__":
    main()
