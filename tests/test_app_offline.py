"""`python app.py` as `make demo` runs it, offline, without --tiny and without any CLIP weights: the toy
micro-CLIP serves at once with scenes of its world, the page tells visitors what it is in their words
(nothing for operators), the first answer comes within a minute of the start and is right, and a
request for a CLIP model fails fast with a visitor message (the operator's reason in the log)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # a real start-up of the app

ROOT = Path(__file__).resolve().parents[1]
FIRST_ANSWER_S = 60  # from `python app.py` to the first answer, 2 idle cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def toy_scene(tmp_path_factory):
    """A scene of the toy world and its true labels (the held-out samples the app's examples use)."""
    from PIL import Image

    from denseclip import toy
    from webapp.examples import TOY_FIRST, TOY_SIZE

    assert toy.toy_clip_file().parent == toy.ASSETS  # the library ships these weights: nothing to train
    from denseclip.data.synthetic import make_sample

    image, label = make_sample(TOY_FIRST, 0, TOY_SIZE)
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(image).save(path)
    return path, label


@pytest.fixture(scope="module")
def offline_app(tmp_path_factory, toy_scene):
    from gradio_client import Client

    tmp = tmp_path_factory.mktemp("offline")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
           "DENSECLIP_WEIGHTS_DIR": str(tmp / "w"), "GRADIO_TEMP_DIR": str(tmp / "gradio"),
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", "GRADIO_SERVER_PORT": str(port)}
    for variable in ("DENSECLIP_TINY", "DENSECLIP_CHECKPOINT_DIR", "DENSECLIP_CHECKPOINTS", "SPACE_ID"):
        env.pop(variable, None)
    log = open(tmp / "app.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=tmp, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        client = None
        while client is None:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{(tmp / 'app.log').read_text()[-3000:]}")
            try:
                client = Client(url, verbose=False, download_files=str(tmp / "downloads"))
            except Exception:  # noqa: BLE001 (not up yet)
                time.sleep(0.3)
            if time.perf_counter() - t0 > 120:
                pytest.fail(f"app.py did not answer within 120 s:\n{(tmp / 'app.log').read_text()[-3000:]}")
        yield url, client, t0, tmp
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_the_toy_model_answers_within_a_minute_and_is_right(offline_app, toy_scene):
    import json

    from gradio_client import handle_file
    from PIL import Image

    url, client, t0, tmp = offline_app
    path, label = toy_scene
    out = client.predict(handle_file(str(path)), "sky, tree, road, person, car", api_name="/segment")
    seconds = time.perf_counter() - t0
    print(f"first answer {seconds:.1f} s after `python app.py`")
    assert seconds < FIRST_ANSWER_S
    result = json.loads(Path(out[3]).read_text())
    assert result["model"] == "Offline demo model" and result["pretrained"] == "toy"
    labels = np.asarray(Image.open(out[2]))
    assert (labels == label).mean() > 0.8  # it knows its world


def test_the_page_says_what_the_offline_model_is_in_visitor_terms(offline_app):
    import httpx

    url, _, _, tmp = offline_app
    deadline = time.time() + 30
    while "CLIP RN101" not in (tmp / "app.log").read_text() and time.time() < deadline:
        time.sleep(0.3)  # the start-up check has tried every CLIP
    page = httpx.get(url + "config", timeout=10).text
    assert "offline demo model: it knows only five things, sky, tree, road, person and car" in page
    assert "Examples: scenes the offline model knows" in page
    for operator_words in ("DENSECLIP_", "--tiny", "HF_HUB_OFFLINE", "server log", "Operator"):
        assert operator_words not in page
    log = (tmp / "app.log").read_text()
    assert "toy micro-CLIP serves visitors" in log and "DENSECLIP_WEIGHTS_DIR" in log  # for the operator


def test_a_clip_model_fails_fast_with_a_visitor_message(offline_app, toy_scene):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    _, client, _, tmp = offline_app
    t0 = time.perf_counter()
    with pytest.raises(AppError, match="not available on this server right now") as info:
        client.predict(handle_file(str(toy_scene[0])), "cup, table", "CLIP RN50 · MaskCLIP",
                       api_name="/segment")
    assert time.perf_counter() - t0 < 15
    assert "DENSECLIP_WEIGHTS_DIR" not in str(info.value) and "--tiny" not in str(info.value)
    log = (tmp / "app.log").read_text()
    assert "Traceback" not in log  # the operator's reason: one line
