"""Every shipped training config survives DDP: two gloo processes, two steps each, no unused parameters.

DDP (find_unused_parameters=False, as the configs run) fails on the second step when a parameter got no
gradient in the first: the CLIP+FPN baselines used to carry CLIP's attention pool (ResNet) or ln_post /
proj (ViT) without using them. Each config's model is shrunk to a tiny CLIP of the same kind (ResNet or
ViT tower, text side or none, detector type) so the structure is the shipped one and the test is quick.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from denseclip.config import TINY_PROMPT, TINY_RN_ARCH, TINY_VIT_ARCH, DenseCLIPConfig, DetectionConfig
from train.engine.config import load_run_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "train" / "configs").glob("*.yaml"))


def tiny_version(path: Path):
    """The config's model with a tiny random CLIP of the same kind, and a batch for it."""
    section = load_run_config(path, sections=("model", "data", "schedule", "train"))["model"]
    det = "det" in path.stem
    cfg = (DetectionConfig if det else DenseCLIPConfig).from_dict(section, "model")
    vit = "ViT" in cfg.clip_model or "patch_size" in (cfg.clip_arch or {}).get("vision_cfg", {})
    changes = {"clip_arch": TINY_VIT_ARCH if vit else TINY_RN_ARCH, "clip_pretrained": None,
               "class_names": ("a", "b", "c"), "prompt": None if cfg.prompt is None else TINY_PROMPT}
    if det:
        changes.update(input_resolution=128, fpn_channels=16, min_size=96, max_size=128, box_head_dim=32,
                       mask_head_channels=8, rpn_batch_size_per_image=32, box_batch_size_per_image=32)
    else:
        changes.update(input_resolution=64, neck_channels=16, head_channels=16)
        if vit:
            changes["vit_out_indices"] = (0, 1, 2, 3)
    return cfg.replace(**changes)


def _batch(cfg, rank: int):
    g = torch.Generator().manual_seed(rank)
    if isinstance(cfg, DetectionConfig):
        target = {"boxes": torch.tensor([[8.0, 8.0, 60.0, 50.0]]), "labels": torch.tensor([1 + rank]),
                  "masks": torch.zeros(1, 96, 128, dtype=torch.uint8)}
        target["masks"][:, 8:50, 8:60] = 1
        return [torch.rand(3, 96, 128, generator=g)], [target]
    return torch.randn(2, 3, 64, 64, generator=g), torch.randint(0, 3, (2, 64, 64), generator=g)


def _worker(rank: int, init: str, errors: str) -> None:
    import denseclip

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    failed = []
    try:
        for path in CONFIGS:
            try:
                cfg = tiny_version(path)
                detection = isinstance(cfg, DetectionConfig)
                build = denseclip.build_detector if detection else denseclip.build_model
                torch.manual_seed(0)
                ddp = torch.nn.parallel.DistributedDataParallel(build(cfg, pretrained=False))
                for _ in range(2):  # an unused parameter fails here, on the second step
                    ddp(*_batch(cfg, rank))["loss"].backward()
            except Exception:  # noqa: BLE001 (collected and reported by the test)
                failed.append(f"{path.name}: {traceback.format_exc(limit=3)}")
    finally:
        dist.destroy_process_group()
    if failed:
        Path(f"{errors}.{rank}").write_text("\n".join(failed))


@pytest.mark.slow
def test_every_shipped_config_takes_ddp_steps_without_unused_parameters(tmp_path):
    assert len(CONFIGS) >= 15
    errors = str(tmp_path / "errors")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(f"file://{tmp_path / 'pg'}", errors), nprocs=2, join=True)
    problems = [p.read_text() for p in tmp_path.glob("errors.*")]
    assert not problems, "\n".join(problems)


def test_tiny_versions_keep_the_structure():
    for path in CONFIGS:
        cfg = tiny_version(path)
        shipped = DetectionConfig if "det" in path.stem else DenseCLIPConfig
        assert isinstance(cfg, shipped) and cfg.clip_pretrained is None
        assert ("clip" in path.stem and "denseclip" not in path.stem) == (cfg.prompt is None), path.name
