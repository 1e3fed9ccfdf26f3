"""The tutorial notebooks: their committed form (fast), and every notebook run offline from top to bottom
against a Hub that never answers (slow tier).

The slow test copies each notebook into a temporary folder (datasets, runs and checkpoints never land in
the repository) and executes it cell by cell with nbclient in a kernel that imports this checkout's
`denseclip`. The Hub is a local socket that accepts connections and never answers, with a short
HF_HUB_ETAG_TIMEOUT: the notebook must decide within seconds that real weights are unavailable and take
its offline path (the toy micro-CLIP, trained once into the shared cache). Then: every cell tagged
"figure" drew an image, and every cell tagged "training" prints the same results on stdout when run again
(progress bars and logs go to stderr).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "python3"
FIGURE_TAG, TRAINING_TAG, WEIGHTS_TAG, SETUP_TAG = "figure", "training", "weights", "setup"
DECIDE_OFFLINE_S = 10.0  # the cell that looks for real weights, with a stalled Hub (timeout 1 s)
MAX_NOTEBOOK_BYTES = 400_000  # committed outputs included


def _ids(paths):
    return [p.stem for p in paths]


def _tagged(nb, tag: str) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if tag in c.metadata.get("tags", [])]


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


def load_executor():
    """notebooks/execute.py (how the committed outputs are made) as a module."""
    spec = importlib.util.spec_from_file_location("notebook_execute", NOTEBOOK_DIR / "execute.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _is_this_python(command: str) -> bool:
    """Whether a kernelspec's argv[0] starts this interpreter; jupyter_client maps a bare "python",
    "python3" or "python3.X" to sys.executable."""
    major, minor = sys.version_info[:2]
    if command in ("python", f"python{major}", f"python{major}.{minor}"):
        return True
    return Path(command).resolve() == Path(sys.executable).resolve()


@pytest.fixture(scope="session")
def python3_kernel() -> str:
    """The `python3` kernelspec, checked to run this venv's interpreter (ipykernel installs it under
    sys.prefix/share/jupyter/kernels; a user-level one in ~/.local/share/jupyter would take precedence)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.fail(f"no '{KERNEL}' Jupyter kernel: install ipykernel in this environment "
                    f"({sys.executable} -m pip install ipykernel)")
    if not _is_this_python(spec.argv[0]):
        pytest.fail(f"the '{KERNEL}' kernelspec in {spec.resource_dir} runs {spec.argv[0]}, not this "
                    f"environment's {sys.executable}; remove that kernelspec or run "
                    f"`{sys.executable} -m ipykernel install --sys-prefix` and put it first in JUPYTER_PATH")
    return KERNEL


@pytest.fixture(scope="module")
def stalled_hub():
    """The URL of a 'Hub' that accepts every connection and never sends a byte (the worst case: no refusal
    to fail fast on, only huggingface_hub's timeout)."""
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def stalled_hub_env(url: str, home: Path) -> dict[str, str]:
    """Environment variables that point huggingface_hub at `url` with a fresh, empty cache."""
    return {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "1", "HF_HOME": str(home),
            "HF_HUB_DISABLE_TELEMETRY": "1"}


# ------------------------------------------------------------------------------------- committed form

def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_pixel_text_matching.ipynb", "02_context_aware_prompting.ipynb",
            "03_finetune_on_your_data.ipynb", "04_any_backbone.ipynb"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_layout(path):
    """Valid nbformat 4 on the python3 kernel; a Colab badge and the paper on top; the setup cells (finding
    or installing denseclip, then the imports, so that imports stay at the top of their cell) first and
    tagged, then the weights cell; figure cells; exercises at the end; no hard-coded thread counts or
    library paths."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL
    top = nb.cells[0]
    assert top.cell_type == "markdown"
    assert "colab.research.google.com/github/" in top.source and path.name in top.source, "no Colab badge"
    assert "arxiv.org/abs/2112.01518" in top.source, "no link to the paper"
    for tag in (SETUP_TAG, WEIGHTS_TAG, FIGURE_TAG):
        cells = _tagged(nb, tag)
        assert cells and all(nb.cells[i].cell_type == "code" for i in cells), f"{path.name}: no {tag!r} cell"
    assert _tagged(nb, SETUP_TAG)[0] < _tagged(nb, WEIGHTS_TAG)[0] < _tagged(nb, FIGURE_TAG)[0]
    last = nb.cells[-3:]
    assert any(c.cell_type == "markdown" and c.source.lstrip().startswith("## Exercises") for c in last)
    setup = _tagged(nb, SETUP_TAG)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert code_cells[:len(setup)] == setup, f"{path.name}: the setup cells are not the first code cells"
    code = [nb.cells[i].source for i in code_cells if i not in setup]
    assert not any("set_num_threads" in c for c in code), f"{path.name} hard-codes a thread count"
    assert not any("sys.path" in c for c in code), f"{path.name}: sys.path is edited outside the setup cells"
    setup_source = "\n".join(nb.cells[i].source for i in setup)
    assert "FAST = " in setup_source and "set_num_threads" not in setup_source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_outputs_are_current_labelled_and_small(path):
    """Outputs may be committed (GitHub shows them) if they come from the offline run of these very
    sources (notebooks/execute.py records their hash), say so, and keep the file small."""
    nb = nbformat.read(path, as_version=4)
    size = path.stat().st_size
    assert size <= MAX_NOTEBOOK_BYTES, f"{path.name}: {size} bytes; downscale its figures"
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not any(c.outputs for c in code):
        return
    executor = load_executor()
    meta = nb.metadata.get("denseclip_outputs", {})
    assert meta.get("source_sha") == executor.source_sha(nb), \
        f"{path.name}: outputs are stale; run `python notebooks/execute.py {path.name}` (or clear them)"
    assert "offline" in meta.get("run", "") and "toy" in meta.get("run", "")
    assert "outputs below come from" in nb.cells[0].source, f"{path.name}: label the outputs at the top"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    missing = [i for i in _tagged(nb, FIGURE_TAG) if not any("image/png" in o.get("data", {})
                                                            for o in nb.cells[i].outputs)]
    assert not missing, f"{path.name}: committed figure cells {missing} have no image"


def test_timm_weights_fail_fast_with_a_stalled_hub(stalled_hub, tmp_path):
    """timm's ImageNet weights are looked up like CLIP's: seconds, then a message, not minutes of retries."""
    script = (
        "import time, denseclip, timm, huggingface_hub  # imports take seconds on a busy machine: not timed\n"
        "from denseclip.encoders.timm_backbone import TimmEncoder\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    TimmEncoder('resnet18', 8, pretrained=True)\n"
        "except denseclip.WeightsUnavailableError as e:\n"
        "    print('FAILED FAST', round(time.perf_counter() - t, 1), str(e)[:400])\n"
    )
    env = {**os.environ, **stalled_hub_env(stalled_hub, tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert "FAILED FAST" in out.stdout, out.stdout + out.stderr
    seconds = float(out.stdout.split("FAILED FAST")[1].split()[0])
    assert seconds < DECIDE_OFFLINE_S, out.stdout
    assert "backbone_pretrained=False" in out.stdout  # says what to do


# ------------------------------------------------------------------------------------------ running

def _execute(nb, work: Path, kernel: str) -> tuple[list[float], dict[int, str]]:
    """Run every cell in order (seconds per cell), then every training cell again (its new stdout)."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=900, kernel_name=kernel, resources={"metadata": {"path": str(work)}})
    seconds, again = [], {}
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            t0 = time.perf_counter()
            client.execute_cell(cell, i)  # raises CellExecutionError with the traceback
            seconds.append(time.perf_counter() - t0)
        for i in _tagged(nb, TRAINING_TAG):
            rerun = nbformat.from_dict(json.loads(json.dumps(nb.cells[i])))
            client.execute_cell(rerun, i)
            again[i] = _stdout(rerun)
    return seconds, again


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_offline(path, tmp_path, monkeypatch, python3_kernel, stalled_hub):
    for key, value in stalled_hub_env(stalled_hub, tmp_path / "hf").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DENSECLIP_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # a CI-wide MPLBACKEND=Agg would swallow the figures
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models; more threads only contend on shared CI cores
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # notebook 3's temporary work folder lands here
    before = {p.name for p in REPO.iterdir()} | {p.name for p in NOTEBOOK_DIR.iterdir()}
    work = tmp_path / "run"
    work.mkdir()
    shutil.copy(path, work / path.name)
    nb = nbformat.read(work / path.name, as_version=4)
    load_executor().clear_outputs(nb)

    t0 = time.perf_counter()
    seconds, again = _execute(nb, work, python3_kernel)
    print(f"{path.name}: {time.perf_counter() - t0:.1f} s, slowest cells "
          f"{sorted(((round(s, 1), i) for i, s in enumerate(seconds)), reverse=True)[:3]}")

    setup = "".join(_stdout(nb.cells[i]) for i in _tagged(nb, SETUP_TAG))
    weights = _tagged(nb, WEIGHTS_TAG)[0]
    assert str(REPO / "denseclip") in setup, \
        f"{path.name}: the kernel did not import this checkout's denseclip: {setup}"
    assert seconds[weights] < DECIDE_OFFLINE_S, \
        f"{path.name}: {seconds[weights]:.1f} s to find out that the Hub does not answer"
    assert "NOTICE" in _stdout(nb.cells[weights]), f"{path.name}: offline, it must say so at the top"
    missing = [i for i in _tagged(nb, FIGURE_TAG)
               if not any("image/png" in o.get("data", {}) for o in nb.cells[i].outputs)]
    assert not missing, f"{path.name}: figure cells {missing} produced no image/png output"
    for i, text in again.items():
        assert text == _stdout(nb.cells[i]), \
            f"{path.name}: running training cell {i} again changed its results:\n" \
            f"{_stdout(nb.cells[i])}\n---\n{text}"
    after = {p.name for p in REPO.iterdir()} | {p.name for p in NOTEBOOK_DIR.iterdir()}
    leaked = (after - before) & {p.name for p in work.iterdir()}  # written in its folder, also in the repo
    assert not leaked, f"{path.name} wrote {sorted(leaked)} into the repository"
