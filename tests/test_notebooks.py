"""The tutorial notebooks: their committed form (fast), and every notebook run offline from top to bottom
against a Hub that never answers (slow tier).

The slow test copies each notebook into a temporary folder (datasets, runs and checkpoints never land in
the repository) and executes it cell by cell with nbclient in a kernel that imports this checkout's
`denseclip`. The Hub is a local socket that accepts connections and never answers, with a short
HF_HUB_ETAG_TIMEOUT: the notebook must decide within seconds that real weights are unavailable and take
its offline path (the toy micro-CLIP, trained once into the shared cache). Then: every cell tagged
"figure" drew an image, and every cell tagged "training" prints the same results on stdout when run again
(progress bars and logs go to stderr). After the notebook, the same kernel runs each exercise's check
(EXERCISE_CHECKS): the expected observation written in the notebook must hold in the toy world.

The fast tier also keeps the Colab side honest: every badge and clone cell points at the repository address
written once in pyproject.toml ([project.urls] Repository), each notebook installs the extras it uses, and
its top cell states the CPU and GPU time of each route.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
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
TIME_BOX_HEADER = "| this notebook | laptop CPU (2 cores) | GPU |"


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


def _setup_source(nb) -> str:
    return "\n".join(nb.cells[i].source for i in _tagged(nb, SETUP_TAG))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_colab_badge_and_clone_cell_point_at_the_project_url(path):
    """One public address, in pyproject.toml: the badge opens this notebook of that repository on Colab,
    and the setup cell clones that repository (a fork changes pyproject and runs --sync-links)."""
    executor = load_executor()
    url = executor.repo_url()
    nb = nbformat.read(path, as_version=4)
    fix = f"run `python notebooks/execute.py --sync-links` (pyproject.toml [project.urls] Repository = {url})"
    links = [m.group(0) for c in nb.cells for m in executor.COLAB_LINK.finditer(c.source)]
    assert links == [executor.colab_link(path.name)], f"{path.name}: Colab links {links}; {fix}"
    assert executor.colab_link(path.name) in nb.cells[0].source, f"{path.name}: no badge on top; {fix}"
    setup = _setup_source(nb)
    assert f'REPO_URL = "{url}"' in setup, f"{path.name}: the clone cell does not clone {url}; {fix}"
    assert "OWNER" not in json.dumps([c.source for c in nb.cells]), f"{path.name}: a placeholder address"


def test_tutorial_pages_link_every_notebook_on_colab():
    """notebooks/README.md and docs/tutorials.md open each notebook on Colab, at the project's address."""
    executor = load_executor()
    for page in executor.LINKED_DOCS:
        text = page.read_text("utf-8")
        links = [m.group(0) for m in executor.COLAB_LINK.finditer(text)]
        assert sorted(set(links)) == sorted(executor.colab_link(p.name) for p in NOTEBOOKS), \
            f"{page}: Colab links {links}; run `python notebooks/execute.py --sync-links`"


def test_sync_links_follows_a_new_address_and_keeps_the_outputs_valid():
    """A fork's address replaces every link and the clone URL; the outputs' hash does not change."""
    executor = load_executor()
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    before = executor.source_sha(nb)
    fork = "https://github.com/someone/denseclip-fork"
    for cell in nb.cells:
        cell.source = executor.sync_text(cell.source, fork)
    text = json.dumps([c.source for c in nb.cells])
    assert "colab.research.google.com/github/someone/denseclip-fork/blob/main/notebooks/" in text
    assert f'REPO_URL = \\"{fork}\\"' in text and executor.repo_url() not in text
    assert executor.source_sha(nb) == before


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_colab_route_installs_the_extras_and_checks_the_gpu(path):
    """On Colab (USING_COLAB) the setup cell installs the repository with the pip extras the notebook uses
    (gradio for `python app.py`), the settings cell says when there is no GPU, and WEIGHTS = "toy" is the
    CPU route the weights cell honours."""
    import tomllib

    nb = nbformat.read(path, as_version=4)
    setup = _setup_source(nb)
    extras = re.search(r'^EXTRAS = "(\[[\w,]+\])?"', setup, re.MULTILINE)
    assert extras and 'USING_COLAB = "google.colab" in sys.modules' in setup
    assert 'pip", "install"' in setup and "{EXTRAS}" in setup
    named = set(extras.group(1).strip("[]").split(",")) if extras.group(1) else set()
    with open(REPO / "pyproject.toml", "rb") as f:
        known = set(tomllib.load(f)["project"]["optional-dependencies"])
    assert named <= known, f"{path.name}: extras {named - known} are not in pyproject.toml"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    if "app.py" in code or "import gradio" in code:
        assert "app" in named, f"{path.name} runs the app: install the [app] extra (gradio) on Colab"
    assert "torch.cuda.is_available()" in setup and "Runtime > Change runtime type" in setup
    assert 'WEIGHTS = "auto"' in setup
    weights = nb.cells[_tagged(nb, WEIGHTS_TAG)[0]].source
    assert 'WEIGHTS == "toy"' in weights, f"{path.name}: the weights cell ignores WEIGHTS = 'toy'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_time_box_gives_cpu_and_gpu_times_of_each_route(path):
    """The top cell's table: a row for the offline (toy) route and one per real-weights route, each with a
    CPU time and a GPU time (or the reason it was not measured)."""
    top = nbformat.read(path, as_version=4).cells[0].source
    assert TIME_BOX_HEADER in top, f"{path.name}: no time box"
    rows = [r for r in top.split(TIME_BOX_HEADER)[1].splitlines()[2:] if r.startswith("|")]
    assert any("toy" in r.split("|")[1] for r in rows) and any("OpenAI" in r for r in rows), rows
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 3 and all(cells), f"{path.name}: incomplete time-box row {row!r}"
        assert all(re.search(r"\d|second|minute|hour", c) for c in cells[1:]), row


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

# ------------------------------------------------------------------------------------ exercises
# Each notebook's exercises, run in its kernel after the notebook: the code does what the exercise tells a
# reader to do ({training} is the notebook's training cell, run again) and prints "EXERCISE <json>";
# the check asserts the observation the exercise promises. Keep them in step with the notebooks' text.
EXERCISE_CODE = {
    "01_pixel_text_matching.ipynb": """
import json
ex = {}
for name, zs in (("attention", zs_attn), ("value", zs_value)):  # 1: the two methods on val[5]
    r = zs.predict(val[5]["image"], CLASSES)
    metric = SegMetric(K)
    metric.update(r.labels, torch.as_tensor(val[5]["label"]))
    ex[name] = [metric.compute()["mIoU"], int(torch.as_tensor(r.labels).unique().numel())]
def takes(names):  # 2: the share of the car's pixels the fifth name wins, its score on and off the car
    hit = total = 0
    on, off = [], []
    for s in val:
        r = zs_value.predict(s["image"], names)
        car = torch.as_tensor(s["label"]) == CLASSES.index("car")
        hit, total = hit + int((torch.as_tensor(r.labels)[car] == 4).sum()), total + int(car.sum())
        on.append(r.scores[4][car])
        off.append(r.scores[4][~car])
    return [hit / total, float(torch.cat(on).mean()), float(torch.cat(off).mean())]
for word in ("vehicle", "banana"):
    ex[word] = takes(["sky", "tree", "road", "person", word])
ex["water"] = float(np.mean([(torch.as_tensor(zs_value.predict(s["image"], CLASSES + ["water"]).labels) == 5)
                             .float().mean() for s in val]))
lab = torch.as_tensor(gt).float()[None, None]  # 3: background thresholds on rgb
edge = (F.max_pool2d(lab, 17, 1, 8) != -F.max_pool2d(-lab, 17, 1, 8))[0, 0]  # within 8 px of another class
for t in (0.2, 0.6):
    gone = torch.as_tensor(zs_value.predict(rgb, CLASSES, background=t).labels) == -1
    person = torch.as_tensor(gt) == CLASSES.index("person")
    ex[f"background {t}"] = {"all": float(gone.float().mean()), "edge": float(gone[edge].float().mean()),
                             "inside": float(gone[~edge].float().mean()),
                             "person": float(gone[person].float().mean())}
print("EXERCISE " + json.dumps(ex))
""",
    "02_context_aware_prompting.ipynb": """
import json
ex, saved = {}, (STEPS, SEEDS, ARMS, BACKBONE_LR_MULT, runs)
ARMS = {"B": ("B hand-written", {"prompt": hand_prompt})}  # 4: the hand-written prompt, trained
{training}
ex["B - A"] = [summary("B", k)[0] - float(np.mean([100 * r[k]["mIoU"] for r in saved[4]["A"].values()]))
               for k in ("head", "maps")]
STEPS, SEEDS, ARMS = 150, (0,), {k: saved[2][k] for k in "PV"}  # 1: more steps
{training}
ex["150 steps"] = [summary("P", "head")[0], summary("P", "head", ROAD)[0], summary("V", "maps")[0]]
STEPS, BACKBONE_LR_MULT, ARMS = saved[0], 1.0, {k: saved[2][k] for k in "AC"}  # 2: the encoder at lr x 1
{training}
ex["lr x 1"] = [summary("A", "maps")[0], summary("C", "maps")[0]]
STEPS, SEEDS, ARMS, BACKBONE_LR_MULT, runs = saved
def mean_cos(m):  # 3: names the text encoder never learnt
    with torch.no_grad():
        t = F.normalize(m.prompting.text_embeddings(), dim=-1)
    return float((t @ t.T)[~torch.eye(len(t), dtype=torch.bool)].mean())
unknown = denseclip.build_model(CFG.replace(class_names=("zorp", "blick", "wug", "dax", "fep")),
                                pretrained=True)
ex["cos"] = [mean_cos(unknown.eval()), mean_cos(model)]
print("EXERCISE " + json.dumps(ex))
""",
    "03_finetune_on_your_data.ipynb": """
import json
ex = {}
run("train.train_seg", "--config", CONFIG, "--work-dir", WORK / "short", "--no-progress",  # 1: stop early
    "--train.max_iters", 80)
r = denseclip.evaluate(denseclip.load_checkpoint(WORK / "short" / "final"), val_ds, progress=False)
ex["80 iterations"] = [100 * r["per_class"]["road"]["IoU"], 100 * (metrics["mIoU"] - r["mIoU"]),
                      100 * metrics["per_class"]["road"]["IoU"]]
log = run("train.train_seg", "--config", CONFIG, "--work-dir", WORK / "noaux", "--no-progress",  # 2: no aux
          "--model.aux_loss_weight", 0)
r = denseclip.evaluate(denseclip.load_checkpoint(WORK / "noaux" / "final"), val_ds, progress=False)
ex["no aux"] = ["loss_aux" in log, 100 * (r["mIoU"] - metrics["mIoU"])]
bad = sorted((root / "masks" / "train").glob("*.png"))[3]  # 3: an RGB mask
Image.open(bad).convert("RGB").save(bad)
try:
    run("train.train_seg", "--config", CONFIG, "--work-dir", WORK / "bad", "--no-progress")
    ex["bad mask"] = "trained"
except RuntimeError as e:
    ex["bad mask"] = [bad.name in str(e), "iter 1" in str(e) or "iter 10/" in str(e)]
print("EXERCISE " + json.dumps(ex))
""",
    "04_any_backbone.ipynb": """
import json
ex, saved = {}, (ARMS, runs)
ex["road sd"] = [float(values(arm, "maps", ROAD).std()) for arm in ("guided", "unknown")]  # 3
ex["guided maps"] = float(values("guided", "maps").mean())
ARMS = {"noaux": ("guided, no aux loss", {"aux_loss_weight": 0.0})}  # 1: no auxiliary loss
{training}
ex["no aux"] = [float(values("noaux", "maps").mean()), float(values("noaux", "head").mean()),
                float(values("guided", "head").mean()) if "guided" in runs else float(
                    np.mean([100 * r["head"]["mIoU"] for r in saved[1]["guided"].values()]))]
ARMS, runs = saved
other = denseclip.build_model(CFG.replace(backbone="convnext_atto"), pretrained=False)  # 2: another backbone
ex["convnext_atto"] = [list(other.encoder.feature_channels), list(other.encoder.feature_strides)]
print("EXERCISE " + json.dumps(ex))
""",
}


def _close(a: float, b: float, within: float) -> bool:
    return abs(a - b) <= within


def check_exercises(name: str, ex: dict) -> None:
    """The observations the exercises of notebook `name` promise (toy world, offline run)."""
    if name.startswith("01"):
        assert ex["value"][0] > 0.8 and ex["attention"][0] < 0.15, ex
        assert ex["vehicle"][0] > 0.5 and ex["banana"][0] > 0.3 and ex["banana"][1] < ex["banana"][2], ex
        assert ex["water"] < 0.01, ex
        assert ex["background 0.2"]["all"] < 1e-3, ex
        b = ex["background 0.6"]
        assert b["edge"] > 0.5 and b["inside"] < 0.1 and 0.3 < b["person"] < 0.7, ex
    elif name.startswith("02"):
        assert all(abs(d) < 5 for d in ex["B - A"]), ex
        head, road, maps_v = ex["150 steps"]
        assert road > 60 and head > 88 and head > maps_v, ex
        assert ex["lr x 1"][0] > 40 and ex["lr x 1"][1] < 20, ex
        assert ex["cos"][0] - ex["cos"][1] > 0.3, ex
    elif name.startswith("03"):
        road, drop, road_full = ex["80 iterations"]
        assert road < road_full / 2 and drop > 10, ex
        assert ex["no aux"][0] is False and abs(ex["no aux"][1]) < 5, ex
        assert ex["bad mask"] != "trained" and ex["bad mask"][0] and not ex["bad mask"][1], ex
    elif name.startswith("04"):
        assert ex["road sd"][1] > 3 * ex["road sd"][0], ex
        maps, head, head_guided = ex["no aux"]
        assert maps < 20 and ex["guided maps"] > 50 and _close(head, head_guided, 5), ex
        assert ex["convnext_atto"] == [[40, 80, 160, 320], [4, 8, 16, 32]], ex


def _execute(nb, work: Path, kernel: str, extra: str | None = None
             ) -> tuple[list[float], dict[int, str], str]:
    """Run every cell in order (seconds per cell), then every training cell again (its new stdout), then
    `extra` (the exercises; its stdout)."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=900, kernel_name=kernel, resources={"metadata": {"path": str(work)}})
    seconds, again, extra_out = [], {}, ""
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            t0 = time.perf_counter()
            client.execute_cell(cell, i)  # raises CellExecutionError with the traceback
            seconds.append(time.perf_counter() - t0)
        for i in _tagged(nb, TRAINING_TAG):
            rerun = nbformat.from_dict(json.loads(json.dumps(nb.cells[i])))
            client.execute_cell(rerun, i)
            again[i] = _stdout(rerun)
        if extra:
            nb.cells.append(nbformat.v4.new_code_cell(extra))  # nbclient writes a cell back by its index
            client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
            extra_out = _stdout(nb.cells.pop())
    return seconds, again, extra_out


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

    training = "".join(nb.cells[i].source for i in _tagged(nb, TRAINING_TAG))
    exercises = EXERCISE_CODE[path.name].replace("{training}", training)
    t0 = time.perf_counter()
    seconds, again, exercise_out = _execute(nb, work, python3_kernel, exercises)
    print(f"{path.name}: {time.perf_counter() - t0:.1f} s, notebook {sum(seconds):.1f} s, slowest cells "
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
    line = [x for x in exercise_out.splitlines() if x.startswith("EXERCISE ")]
    assert line, f"{path.name}: the exercise checks printed nothing:\n{exercise_out[-2000:]}"
    check_exercises(path.name, json.loads(line[-1].removeprefix("EXERCISE ")))
    after = {p.name for p in REPO.iterdir()} | {p.name for p in NOTEBOOK_DIR.iterdir()}
    leaked = (after - before) & {p.name for p in work.iterdir()}  # written in its folder, also in the repo
    assert not leaked, f"{path.name} wrote {sorted(leaked)} into the repository"
