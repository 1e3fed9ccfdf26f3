"""The demo as a Space runs it: plain `python app.py`, CLIP weights in the Hugging Face cache, requests
through gradio_client; against a bare float32 open_clip `encode_image` of ViT-B/16 at 448 px measured in
the same run (the ratio is what compares across machines).

    python benchmarks/bench_app.py                 # about 3 minutes on 2 cores; writes ~1.5 GB of weights
    python benchmarks/bench_app.py --app OTHER/app.py --requests 8    # another version of the app

No real weights are needed: each offered CLIP (ViT-B/16, RN50, RN101) gets random weights of its real
architecture, saved as safetensors where `denseclip.clip.hub_weights(model, "openai")` and the Hub cache
layout put them, in a temporary HF_HOME (offline), so the app loads them as it loads OpenAI's.
Measured: the default request (a 512x512 photo, 8 names, the default model) at the client, p50 and p95;
the server's own time and the time to write the outputs; memory once every offered model is loaded (RSS
and peak); the first ADE20K-150 request (150 names) after the start-up's background text embedding.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the web app (webapp/) beside the library, as `python app.py` sees it
PHOTO = ROOT / "examples" / "astronaut.jpg"  # 512 x 512
NAMES = "astronaut, American flag, space helmet, space shuttle model, wall, face, glove, suit"
CLIPS = ("ViT-B-16", "RN50", "RN101")


def hub_cache_weights(hf_home: Path) -> None:
    """Random weights of each offered CLIP, in the Hub cache layout at the file the app looks for."""
    import open_clip
    from safetensors.torch import save_file

    from denseclip.clip import hub_weights

    for name in CLIPS:
        repo, files = hub_weights(name, "openai")
        snapshot = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
        commit = "0" * 40
        (snapshot / "refs").mkdir(parents=True, exist_ok=True)
        (snapshot / "refs" / "main").write_text(commit)
        path = snapshot / "snapshots" / commit / files[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        model = open_clip.create_model(name, pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def bare_encode_image(runs: int = 5) -> float:
    """Median seconds of open_clip's float32 encode_image of ViT-B/16 at 448 x 448 (random weights)."""
    import open_clip

    model = open_clip.create_model("ViT-B-16", pretrained=None, force_image_size=448).eval()
    x = torch.randn(1, 3, 448, 448)
    times = []
    with torch.no_grad():
        model.encode_image(x)
        for _ in range(runs):
            t0 = time.perf_counter()
            model.encode_image(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def output_writing(runs: int = 10) -> float:
    """Median seconds of webapp.outputs.render for the 512 x 512 photo and 8 names (what a request writes:
    picture, first score maps, label map, JSON, arrays), with the tiny model (the files do not depend on
    the model: the maps are kept at a fixed size)."""
    from webapp import ModelRegistry, OutputFolders, default_specs, render, segment

    registry = ModelRegistry(default_specs(tiny=True)[:1], device="cpu")
    seg = segment(registry, str(PHOTO), NAMES)
    folders = OutputFolders(tempfile.mkdtemp(prefix="bench-app-outputs-"))
    times = []
    for _ in range(runs):
        folder = folders.new()
        t0 = time.perf_counter()
        render(seg, folder)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def memory(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) of a process in GB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return tuple(int(re.search(rf"{key}:\s+(\d+)", status).group(1)) / 1e6 for key in ("VmRSS", "VmHWM"))


def wait_for(log: Path, pattern: str, proc, timeout: float) -> float:
    t0 = time.perf_counter()
    while not re.search(pattern, log.read_text()):
        if proc.poll() is not None or time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"no '{pattern}' in the app's log:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--app", default=str(ROOT / "app.py"), help="the app.py to run (default: this one)")
    p.add_argument("--requests", type=int, default=12, help="timed default requests (after 2 warm-ups)")
    p.add_argument("--wait", type=float, default=600, help="seconds to wait for the models to load")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-app-"))
    hub_cache_weights(work / "hf")
    bare = bare_encode_image()
    writing = output_writing()
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    port_number = port.getsockname()[1]
    port.close()
    env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(work / "gradio")}
    for variable in ("DENSECLIP_TINY", "DENSECLIP_WEIGHTS_DIR", "DENSECLIP_CHECKPOINTS", "SPACE_ID"):
        env.pop(variable, None)
    log = work / "app.log"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, args.app, "--port", str(port_number)], cwd=work, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        run(args, proc, log, port_number, started, bare, writing, work)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)  # the weights: about 1.5 GB


def run(args, proc, log: Path, port: int, started: float, bare: float, writing: float, work: Path) -> None:  # noqa: PLR0913
    from gradio_client import Client, handle_file

    for name in ("RN101", "RN50", "ViT-B/16"):  # every offered model loaded
        wait_for(log, rf"loaded CLIP {name}", proc, args.wait)
    loaded_at = time.perf_counter() - started
    try:  # an app that embeds the preset class lists at start says when it is done
        wait_for(log, r"embedded \d+ preset class names|embedding the preset", proc, 300)
        embedded_at = f"{time.perf_counter() - started:.0f} s"
    except RuntimeError:
        embedded_at = "not done at start"
    rss, peak = memory(proc.pid)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(work / "downloads"))
    times, server = [], []
    for i in range(args.requests + 2):
        t0 = time.perf_counter()
        out = client.predict(handle_file(str(PHOTO)), NAMES, api_name="/segment")
        if i >= 2:  # the first two: this request's text embeddings, warm caches
            times.append(time.perf_counter() - t0)
            server.append(json.loads(Path(out[3]).read_text()))
    from webapp import PRESETS, preset_text

    t0 = time.perf_counter()
    ade = client.predict(handle_file(str(PHOTO)), preset_text(PRESETS["ADE20K (150)"]), api_name="/segment")
    ade_seconds = time.perf_counter() - t0
    rss_after, peak_after = memory(proc.pid)
    p50, p95 = float(np.percentile(times, 50)), float(np.percentile(times, 95))
    info = server[-1]
    timing = {k: statistics.median(s["timing"].get(k, 0.0) for s in server) for k in info["timing"]}
    print(f"app: {args.app}  ({info['model']}, {info['info'].get('dtype', 'float32?')}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"bare fp32 encode_image ViT-B/16 @448      {bare:.3f} s")
    print(f"default request at the client  p50 {p50:.3f} s  p95 {p95:.3f} s  ({args.requests} requests)  "
          f"= {p50 / bare:.2f}x / {p95 / bare:.2f}x encode_image")
    seconds = statistics.median(s["seconds"] for s in server)
    print(f"  server (JSON 'seconds', median)         {seconds:.3f} s  "
          f"timing {json.dumps({k: round(v, 3) for k, v in timing.items()})}")
    print(f"  writing the outputs (render, 512^2, 8 names)  {writing:.3f} s")
    print(f"memory, every offered model loaded        RSS {rss:.2f} GB  peak {peak:.2f} GB  "
          f"(after the requests: {rss_after:.2f} / {peak_after:.2f} GB)")
    print(f"start -> every model loaded {loaded_at:.0f} s; -> preset class lists embedded: {embedded_at}")
    print(f"first ADE20K-150 request (after the background embedding)  {ade_seconds:.2f} s  "
          f"(server {json.loads(Path(ade[3]).read_text())['seconds']:.2f} s)")


if __name__ == "__main__":
    main()
