"""Shared fixtures: tiny random open_clip models (no network), offline hub, seeds."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from denseclip.config import TINY_RN_ARCH, TINY_VIT_ARCH  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def make_clip(arch: dict, quick_gelu: bool = True):
    import open_clip

    return open_clip.CLIP(**copy.deepcopy(arch), quick_gelu=quick_gelu).eval()


@pytest.fixture
def tiny_rn_clip():
    return make_clip(TINY_RN_ARCH)


@pytest.fixture
def tiny_vit_clip():
    return make_clip(TINY_VIT_ARCH)


def randomize_bn(module: torch.nn.Module, generator: torch.Generator | None = None) -> None:
    """Give every BatchNorm non-trivial running stats and affine params (eval-mode parity tests)."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5, generator=generator)
                    m.bias.normal_(0, 0.1, generator=generator)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for tiny models: they gain nothing from more, and shared CI cores stay responsive."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def load_app():
    """app.py as the module `app` (the repo root is on sys.path through pytest's pythonpath setting)."""
    import app

    return app
