"""The tutorial notebooks: each runs top to bottom offline, every figure cell draws, none is committed with outputs.

Each notebook is copied into a temporary folder and executed there with nbclient (so datasets, runs and
checkpoints never land in the repository), with HF_HUB_OFFLINE=1: the notebooks then switch to tiny
random models by themselves. A code cell tagged "figure" must produce an image/png output.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
FIGURE_TAG = "figure"
KERNEL = "python3"


def _ids(paths):
    return [p.stem for p in paths]


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


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_pixel_text_matching.ipynb", "02_context_aware_prompting.ipynb",
            "03_finetune_on_your_data.ipynb", "04_any_backbone.ipynb"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"
    figures = [c for c in nb.cells if FIGURE_TAG in c.metadata.get("tags", [])]
    assert figures, f"{path.name} has no cell tagged {FIGURE_TAG!r}"
    assert all(c.cell_type == "code" for c in figures)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_offline(path, tmp_path, monkeypatch, python3_kernel):
    from nbclient import NotebookClient

    # The kernel inherits this environment: no Hub and no local CLIP weights (an empty Hub cache, no
    # DENSECLIP_WEIGHTS_DIR), so the notebooks take their offline path with tiny random models, as in CI;
    # the inline matplotlib backend (a CI-wide MPLBACKEND=Agg would swallow the figures).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("DENSECLIP_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    repo = NOTEBOOK_DIR.parent
    before = {p.name for p in repo.iterdir()} | {p.name for p in NOTEBOOK_DIR.iterdir()}
    work = tmp_path / "run"
    work.mkdir()
    copy = work / path.name
    shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)

    t0 = time.perf_counter()
    NotebookClient(nb, timeout=300, kernel_name=python3_kernel,
                   resources={"metadata": {"path": str(work)}}).execute()  # raises CellExecutionError on error
    print(f"{path.name}: {time.perf_counter() - t0:.1f} s")

    missing = [i for i, c in enumerate(nb.cells)
               if FIGURE_TAG in c.metadata.get("tags", [])
               and not any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert not missing, f"{path.name}: figure cells {missing} produced no image/png output"
    first = [c for c in nb.cells if c.cell_type == "code"][:3]
    assert "NOTICE" in "".join(o.get("text", "") for c in first for o in c.outputs), \
        f"{path.name}: offline, the notebook must say at the top that it switched to a tiny random model"
    after = {p.name for p in repo.iterdir()} | {p.name for p in NOTEBOOK_DIR.iterdir()}
    leaked = (after - before) & {p.name for p in work.iterdir()}  # what it wrote in its folder, also in the repo
    assert not leaked, f"{path.name} wrote {sorted(leaked)} into the repository"
