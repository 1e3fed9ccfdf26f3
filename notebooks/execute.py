"""Run the tutorial notebooks offline and store their outputs in them, so that readers on GitHub see the
figures of the offline run (the toy micro-CLIP on a CPU); each notebook's top cell says so.

    python notebooks/execute.py                        # all four, from the repository root
    python notebooks/execute.py 02_context_aware_prompting.ipynb
    python notebooks/execute.py --clear                # strip the outputs instead
    python notebooks/execute.py --sync-links           # badges and clone cells <- pyproject's address

Each notebook runs in a fresh temporary folder with HF_HUB_OFFLINE=1 and this checkout's `denseclip` on
the kernel's PYTHONPATH, with one OpenMP thread unless OMP_NUM_THREADS says otherwise (as in
tests/test_notebooks.py: the models are tiny, and on a shared machine more threads only contend).
Figures are downscaled (at most 640 px wide, 256-colour PNGs), progress bars (stderr) are dropped, and
the hash of the code cells is recorded in the notebook's metadata: tests/test_notebooks.py fails when
the committed outputs no longer belong to the code above them.

The repository's public address is written once, as `Repository` in pyproject.toml's [project.urls]. Each
notebook's Colab badge and the `REPO_URL` of its setup cell (what Colab clones), and the Colab links of
notebooks/README.md and docs/tutorials.md, are derived from it by `--sync-links`; the test checks them.
The address does not change what an offline run prints, so it is left out of the hash.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MAX_WIDTH = 640  # pixels of a stored figure
RUN_LABEL = "offline (HF_HUB_OFFLINE=1): the toy micro-CLIP, CPU"
BRANCH = "main"  # the branch Colab opens the notebooks from
REPO_URL_LINE = re.compile(r'^REPO_URL = "[^"]*"', re.MULTILINE)  # in each notebook's first setup cell
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/[^/\s)]+/"
                        r"notebooks/(?P<name>[\w.-]+\.ipynb)")
LINKED_DOCS = (HERE / "README.md", REPO / "docs" / "tutorials.md")  # pages with Colab links too


def repo_url() -> str:
    """The repository's public address: `Repository` in pyproject.toml's [project.urls]."""
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        urls = tomllib.load(f)["project"].get("urls", {})
    url = urls.get("Repository", "").rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError("pyproject.toml [project.urls] Repository must be "
                         f"https://github.com/<owner>/<name> (Colab opens GitHub repositories), got {url!r}")
    return url


def colab_link(name: str, url: str | None = None) -> str:
    """The address that opens notebooks/<name> of the repository on Colab."""
    path = (url or repo_url()).removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{BRANCH}/notebooks/{name}"


def sync_text(text: str, url: str) -> str:
    """`text` with every Colab link and `REPO_URL = "..."` line pointing at `url`."""
    text = COLAB_LINK.sub(lambda m: colab_link(m["name"], url), text)
    return REPO_URL_LINE.sub(f'REPO_URL = "{url}"', text)


def source_sha(nb) -> str:
    """Hash of the code cells' sources: outputs stored with one hash belong to exactly that code (the
    repository address of the setup cell aside: Colab clones from it, an offline run never reads it)."""
    code = [REPO_URL_LINE.sub('REPO_URL = ""', c.source) for c in nb.cells if c.cell_type == "code"]
    return hashlib.sha256(json.dumps(code).encode()).hexdigest()[:16]


def sync_links(paths: list[Path]) -> list[Path]:
    """Point the notebooks' badges and clone cells, and the linked pages, at pyproject's address; returns
    the files it changed (their stored outputs stay valid: the hash skips the address)."""
    url, changed = repo_url(), []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        before = json.dumps([c.source for c in nb.cells])
        for cell in nb.cells:
            cell.source = sync_text(cell.source, url)
        if json.dumps([c.source for c in nb.cells]) != before:
            nbformat.write(nb, path)
            changed.append(path)
    for page in LINKED_DOCS:
        text = page.read_text("utf-8")
        if sync_text(text, url) != text:
            page.write_text(sync_text(text, url), "utf-8")
            changed.append(page)
    return changed


def clear_outputs(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    nb.metadata.pop("denseclip_outputs", None)


def shrink_png(data: str) -> str:
    """A base64 PNG, at most MAX_WIDTH wide and with 256 colours (figures are flat colours and text)."""
    from PIL import Image

    im = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    if im.width > MAX_WIDTH:
        im = im.resize((MAX_WIDTH, round(im.height * MAX_WIDTH / im.width)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.quantize(256, method=Image.Quantize.FASTOCTREE).save(buf, "PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def tidy_outputs(nb) -> None:
    """Drop stderr (progress bars, warnings) and per-cell timing; downscale figures."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
        for out in cell.outputs:
            if "image/png" in out.get("data", {}):
                out["data"]["image/png"] = shrink_png(out["data"]["image/png"])
                out.get("metadata", {}).pop("image/png", None)


def execute(path: Path, timeout: int = 1800) -> float:
    """Run `path` offline in a temporary folder and write its outputs into `path`; returns seconds."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    clear_outputs(nb)
    os.environ.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
                      PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.pop("MPLBACKEND", None)
    os.environ.pop("DENSECLIP_WEIGHTS_DIR", None)
    work = Path(tempfile.mkdtemp(prefix="denseclip-notebook-"))
    try:
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(work)}}).execute()
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tidy_outputs(nb)
    nb.metadata["denseclip_outputs"] = {"run": RUN_LABEL, "source_sha": source_sha(nb)}
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", help="file names in notebooks/ (default: all)")
    p.add_argument("--clear", action="store_true", help="strip the outputs instead of running")
    p.add_argument("--sync-links", action="store_true",
                   help="point Colab badges and clone cells at pyproject's [project.urls] Repository, no run")
    args = p.parse_args(argv)
    paths = [HERE / n for n in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    if args.sync_links:
        changed = sync_links(paths)
        print(f"{repo_url()}: " + (", ".join(p.name for p in changed) or "every link already points there"))
        return
    for path in paths:
        if args.clear:
            nb = nbformat.read(path, as_version=4)
            clear_outputs(nb)
            nbformat.write(nb, path)
            print(f"{path.name}: outputs cleared")
        else:
            seconds = execute(path)
            print(f"{path.name}: {seconds:.0f} s, {path.stat().st_size / 1000:.0f} kB", flush=True)


if __name__ == "__main__":
    sys.exit(main())
