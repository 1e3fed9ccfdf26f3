"""`--push-to-hub REPO`: checked before training starts; at the end the model uploads itself with its card
(`model.push_to_hub`, huggingface_hub's ModelHubMixin: weights, config.json, a task-aware README.md)."""

from __future__ import annotations

from .config import TrainConfig


class HubUnavailableError(RuntimeError):
    pass


def check_hub_ready(repo_id: str) -> None:
    """Fail now, not after 80k iterations: the repo id is well-formed, the Hub is not switched off, a token
    works. Offline (HF_HUB_OFFLINE=1) this fails at once, without a request."""
    from huggingface_hub import HfApi, is_offline_mode

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"--push-to-hub expects a repo id like 'user/denseclip-rn50-ade20k', "
                         f"got {repo_id!r}")
    later = (f"Train without --push-to-hub and upload the final model later with "
             f"`huggingface-cli upload {repo_id} WORK_DIR/final`.")
    if is_offline_mode():
        raise HubUnavailableError(f"--push-to-hub {repo_id}: the Hugging Face Hub is unreachable "
                                  f"(HF_HUB_OFFLINE is set). {later}")
    try:
        HfApi().whoami()
    except Exception as e:
        raise HubUnavailableError(f"--push-to-hub {repo_id}: the Hugging Face Hub is unreachable or the "
                                  f"token is missing ({type(e).__name__}: {str(e)[:200]}); run "
                                  f"`huggingface-cli login` or set HF_TOKEN. {later}") from e


def recipe(cfg: TrainConfig) -> dict:
    """The training recipe a model card states."""
    keys = ["max_iters", "total_batch", "lr", "weight_decay", "backbone_lr_mult", "warmup_iters", "amp"]
    if cfg.schedule == "step":
        keys += ["lr_steps", "lr_gamma"]
    return {k: v for k, v in cfg.to_dict().items() if k in keys}

