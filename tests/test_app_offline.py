"""`python app.py` without --tiny and without weights (no Hub): the app starts at once and says in the UI
what is missing and how to provide it; a request for the missing model fails fast with that message."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def offline_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("offline")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"), "DENSECLIP_WEIGHTS_DIR": str(tmp / "w"),
           "GRADIO_TEMP_DIR": str(tmp / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    env.pop("DENSECLIP_TINY", None)
    env.pop("DENSECLIP_CHECKPOINT_DIR", None)
    log = open(tmp / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    import httpx

    t0 = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{(tmp / 'app.log').read_text()[-3000:]}")
            try:
                if httpx.get(url + "config", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > 120:
                pytest.fail(f"app.py did not answer within 120 s:\n{(tmp / 'app.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, time.perf_counter() - t0, tmp
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_starts_offline_and_says_what_is_missing(offline_app):
    import httpx

    url, _, _ = offline_app
    config = httpx.get(url + "config", timeout=10).text
    assert "Zero-shot CLIP RN50 (OpenAI) is not available" in config
    assert "DENSECLIP_WEIGHTS_DIR" in config and "--tiny" in config


def test_missing_model_request_fails_fast(offline_app, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, _, _ = offline_app
    client = Client(url, verbose=False, download_files=str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(AppError, match="not available") as info:
        client.predict(handle_file(str(ROOT / "examples" / "beach.jpg")), "sky, sea", api_name="/segment")
    assert time.perf_counter() - t0 < 15
    assert "DENSECLIP_WEIGHTS_DIR" in str(info.value)
