"""`--push-to-hub REPO`: checked before training starts, uploaded (model + card) at the end."""

from __future__ import annotations

from pathlib import Path


class HubUnavailableError(RuntimeError):
    pass


def check_hub_ready(repo_id: str) -> None:
    """Fail now, not after 80k iterations: the repo id is well-formed, the Hub answers, a token works."""
    from denseclip.weights import hub_reachable

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"--push-to-hub expects a repo id like 'user/denseclip-rn50-ade20k', got {repo_id!r}")
    if not hub_reachable():
        raise HubUnavailableError(
            f"--push-to-hub {repo_id}: the Hugging Face Hub is unreachable (no network, or HF_HUB_OFFLINE=1). "
            "Train without --push-to-hub and upload the final folder later with "
            f"`huggingface-cli upload {repo_id} WORK_DIR/final`.")
    from huggingface_hub import HfApi

    try:
        user = HfApi().whoami()
    except Exception as e:
        raise HubUnavailableError(f"--push-to-hub {repo_id}: not logged in to the Hugging Face Hub ({e}); "
                                  "run `huggingface-cli login` or set HF_TOKEN") from e
    if not user:
        raise HubUnavailableError("--push-to-hub: no Hugging Face user for the current token")


def is_detection(cfg) -> bool:
    """A detector's config (denseclip.detection.DetectionConfig) rather than a segmentor's."""
    return hasattr(cfg, "detector")


def headline(metrics: dict, key: str) -> str:
    """The validation number `key` as a run reports it: mIoU with 2 decimals, box AP with 1 (as the papers)."""
    if key == "mIoU":
        return f"mIoU {100 * metrics[key]:.2f}"
    if key == "bbox_AP":
        return f"box AP {100 * metrics[key]:.1f}"
    return f"{key} {metrics[key]:.4g}"


def _segmentation_card(cfg, metrics: dict | None, repo_id: str) -> list[str]:
    lines = [f"DenseCLIP segmentor `{cfg.name}` (CLIP `{cfg.clip_model}`, {cfg.num_classes} classes, "
             f"{'context-aware prompting' if cfg.use_text else 'CLIP + FPN baseline'}), trained with the "
             "`denseclip` training script (DenseCLIP, Rao et al., CVPR 2022).", "",
             "```python", "import denseclip", f'model = denseclip.load_checkpoint("{repo_id}")',
             'r = denseclip.predict(model, "photo.jpg")  # r.labels (H, W)', "```", ""]
    if metrics:
        lines += ["## Validation", "", "| aAcc | mIoU | mAcc |", "| --- | --- | --- |",
                  f"| {100 * metrics.get('aAcc', float('nan')):.2f} | {100 * metrics.get('mIoU', float('nan')):.2f} "
                  f"| {100 * metrics.get('mAcc', float('nan')):.2f} |", "",
                  f"Test pipeline: {cfg.test.mode}, crop {cfg.test.crop}, stride {cfg.test.stride}, "
                  f"short side {cfg.test.short_side}.", ""]
    return lines


def _detection_card(cfg, metrics: dict | None, repo_id: str) -> list[str]:
    lines = [f"DenseCLIP {cfg.detector} `{cfg.name}` (CLIP `{cfg.clip_model}`, {cfg.num_classes} classes, "
             f"{'language-guided' if cfg.use_text else 'CLIP baseline'}), a torchvision detector trained with "
             "the `denseclip` training script (DenseCLIP, Rao et al., CVPR 2022).", "",
             "```python", "from denseclip.detection import load_detector, detect",
             f'model = load_detector("{repo_id}")', 'r = detect(model, "photo.jpg")  # r.boxes, r.names, r.scores',
             "```", ""]
    if metrics:
        kinds = [k for k in ("bbox", "segm") if f"{k}_AP" in metrics]
        cols = [f"{'box' if k == 'bbox' else 'mask'} {m}" for k in kinds for m in ("AP", "AP50", "AP75")]
        values = [metrics.get(f"{k}_{m}", float("nan")) for k in kinds for m in ("AP", "AP50", "AP75")]
        lines += ["## Validation (COCO)", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols),
                  "| " + " | ".join(f"{100 * v:.1f}" for v in values) + " |", "",
                  f"Test: short side {cfg.min_size}, long side at most {cfg.max_size}.", ""]
    return lines


def model_card(cfg, metrics: dict | None, train_cfg: dict | None, repo_id: str) -> str:
    """A README.md for the Hub: what the model is, how to load it, its validation numbers (mIoU for a
    segmentor, box/mask AP for a detector: the task follows from `cfg`), its training recipe."""
    detection = is_detection(cfg)
    lines = ["---", "library_name: denseclip", "tags:", "- object-detection" if detection else "- semantic-segmentation",
             "- denseclip", "- clip", "license: apache-2.0", "---", "", f"# {repo_id.split('/')[-1]}", ""]
    lines += (_detection_card if detection else _segmentation_card)(cfg, metrics, repo_id)
    if train_cfg:
        keys = ("max_iters", "total_batch", "lr", "weight_decay", "backbone_lr_mult", "warmup_iters", "amp")
        if train_cfg.get("schedule") == "step":
            keys += ("lr_steps", "lr_gamma")
        lines += ["## Training", "", ", ".join(f"{k}={train_cfg[k]}" for k in keys if k in train_cfg), ""]
    lines += ["Classes: " + ", ".join(cfg.class_names), ""]
    return "\n".join(lines)


def push_folder(folder: Path, repo_id: str, card: str, private: bool = False) -> str:
    """Create the repo if needed and upload `folder` with README.md = card; returns the repo URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    (folder / "README.md").write_text(card, "utf-8")
    api = HfApi()
    url = api.create_repo(repo_id, exist_ok=True, private=private)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload DenseCLIP model")
    return str(url)
