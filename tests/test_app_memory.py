"""A long-running server stays flat: `python app.py --tiny` answers 500 /segment requests through
gradio_client (files downloaded, as a client does), and its memory and its result files on disk stay
bounded (the files by DENSECLIP_OUTPUT_MB; the memory by no growth after the first requests)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about 3 minutes on 2 cores

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = 500


def rss_mb(pid: int) -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1e3


def disk_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def test_memory_and_disk_stay_bounded_over_500_requests(tmp_path):
    from gradio_client import Client, handle_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "DENSECLIP_OUTPUT_MB": "40", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--tiny", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False,
                                download_files=str(tmp_path / "downloads"))
                break
            except Exception:  # noqa: BLE001 (not up yet)
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "app.log").read_text()
                time.sleep(0.5)
        photos = sorted(str(p) for p in (ROOT / "examples").glob("*.jpg"))
        rss, disk = {}, {}
        for i in range(1, REQUESTS + 1):
            client.predict(handle_file(photos[i % len(photos)]), f"sky, tree, person {i % 7}, car, road",
                           api_name="/segment")
            if i in (100, 300, REQUESTS):
                rss[i], disk[i] = rss_mb(proc.pid), disk_mb(tmp_path / "gradio" / "denseclip-runs")
        print(f"RSS after 100 / 300 / 500 requests: {rss} MB; result files on disk: {disk} MB")
        assert rss[REQUESTS] - rss[100] < 40, rss  # flat once warm (allocator noise: a few MB)
        assert max(disk.values()) < 40 + 5, disk  # the budget, plus the request in progress
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
