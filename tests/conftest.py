"""Shared fixtures: tiny random open_clip models (no network), offline hub, seeds; the test tiers.

`pytest` runs the fast tier (a few minutes); `pytest --all` (what `make test` and CI run) adds the slow
tier: tests marked `slow` (notebooks, torchrun, kills and resumes) or `browser` (headless Chromium).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# the app's tests: Gradio reads its upload/cache folder at import
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="denseclip-gradio-test-"))

import copy  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from denseclip.config import TINY_RN_ARCH, TINY_VIT_ARCH  # noqa: E402

SLOW_MARKERS = ("slow", "browser")


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", help="also run the slow tier (marked slow or browser)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--all"):
        return
    slow = [item for item in items if any(item.get_closest_marker(m) for m in SLOW_MARKERS)]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item not in slow]


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
    """One intra-op thread for tiny models: they gain nothing from more; shared CI cores stay responsive."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# --------------------------------------------------------------------------------- the app's tests
PHOTO = Path(__file__).resolve().parents[1] / "examples" / "coffee.jpg"  # 600x400, CC0
CLASSES = "coffee, cup, saucer, spoon, table"


def load_app():
    """app.py as the module `app` (the repo root is on sys.path through pytest's pythonpath setting)."""
    import app

    return app


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Payload:
    """Unpickling this would run code: a checkpoint holding it must be refused (weights_only)."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/denseclip-app-test-pickle-ran",))


@pytest.fixture(scope="session")
def app_checkpoints(tmp_path_factory):
    """A folder of checkpoints for the app: a tiny DenseCLIP, a pickle with a payload, garbage."""
    import denseclip

    folder = tmp_path_factory.mktemp("checkpoints")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = denseclip.build_model("denseclip-tiny-rn", pretrained=False)
    denseclip.save_checkpoint(model, folder / "tiny-dc.safetensors")
    torch.save({"meta": {"CLASSES": ("a", "b")}, "state_dict": {"w": torch.zeros(1)}, "hook": Payload()},
               folder / "evil.pth")
    (folder / "garbage.safetensors").write_bytes(b"\x00" * 64)
    return folder


@pytest.fixture(scope="session")
def app_server(app_checkpoints):
    """(demo, url) of one live app for the API tests: like `python app.py --tiny` plus a checkpoint folder."""
    from webapp import AppConfig

    app = load_app()
    config = AppConfig(tiny=True, checkpoint_dir=str(app_checkpoints), host="127.0.0.1", port=free_port())
    demo = app.build_app(config)
    _, url, _ = app.serve(demo, prevent_thread_lock=True, quiet=True)
    yield demo, url
    demo.close()


@pytest.fixture(scope="session")
def app_client(app_server, tmp_path_factory):
    from gradio_client import Client

    return Client(app_server[1], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="session")
def small_image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "small.png"
    Image.open(PHOTO).resize((96, 64)).save(path)
    return path


def segment(client, image, classes=CLASSES, **kw):
    """/segment through gradio_client: (segmentation, score_maps, label_map_png, results_json, status)."""
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)), classes, api_name="/segment", **kw)


def results(out) -> dict:
    return json.loads(Path(out[3]).read_text("utf-8"))


def assert_still_serving(client, small_image):
    out = segment(client, small_image, "sky, road")
    assert [c["name"] for c in results(out)["classes"]] == ["sky", "road"]


def expect_error(client, image, classes=CLASSES, match: str = "", **kw) -> str:
    """The message of a refused request: for the visitor (no traceback, no Markdown, no operator words)."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        segment(client, image, classes, **kw)
    message = str(info.value)
    assert match.lower() in message.lower(), message
    assert "Traceback" not in message and "`" not in message
    for operator_words in ("DENSECLIP_", "--tiny", "HF_HUB_OFFLINE", "--checkpoint"):
        assert operator_words not in message, message
    return message
