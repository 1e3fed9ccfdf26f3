"""The Hugging Face Space: README.md's front matter (read with huggingface_hub's card parser) matches what
the app offers and needs; a Space runs plain `python app.py`, so every option has a variable, and `demo`
is bound at module level; a CPU Space installs torch's CPU build while `make` installs still work here;
the README's deploy commands exist in the `hf` CLI with the options it uses."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import RepoCard
from packaging.requirements import Requirement
from packaging.version import Version

from webapp import AppConfig
from webapp.catalog import ZERO_SHOT_MODELS, preload_entries
from webapp.examples import load_examples

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text("utf-8")
SPACES = README[README.index("### Deploy to Hugging Face Spaces"):README.index("### Credits")]


@pytest.fixture(scope="module")
def card() -> dict:
    return RepoCard.load(ROOT / "README.md").data.to_dict()


def test_front_matter_runs_this_app(card):
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py" and (ROOT / card["app_file"]).is_file()
    assert card["python_version"] == "3.11" and card["license"] == "apache-2.0"
    assert len(card["short_description"]) <= 60  # the Hub's limit


def test_the_space_preloads_what_the_app_offers(card):
    assert sorted(card["preload_from_hub"]) == sorted(preload_entries())  # every offered CLIP, nothing else
    assert {entry.split()[0] for entry in card["preload_from_hub"]} == set(card["models"])
    assert {m.clip for m in ZERO_SHOT_MODELS} == {"ViT-B-16", "RN50", "RN101"}


def test_sdk_version_is_in_the_gradio_range(card):
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    gradio = Requirement(next(line for line in lines if re.match(r"gradio\b", line)))
    assert Version(card["sdk_version"]) in gradio.specifier
    assert gradio.specifier.contains("7.0") is False  # the next major is not promised to work


def test_a_cpu_space_installs_torchs_cpu_build_and_make_leaves_that_index_out():
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    torch = Requirement(next(line for line in lines if re.match(r"torch\b", line)))
    assert Version("2.14.1") in torch.specifier  # what our machines install (the Makefile's TORCH_SPEC)
    dry = subprocess.run(["make", "-n", "install", "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "grep -v '^--extra-index-url' requirements.txt > /nonexistent-venv/requirements-local.txt" in dry
    assert "-r /nonexistent-venv/requirements-local.txt" in dry and "-r requirements.txt" not in dry


@pytest.mark.slow
def test_the_local_requirements_resolve_here_without_the_cpu_index(tmp_path):
    """What `make` installs from: pip resolves it with this machine's indexes only (a dry run)."""
    local = tmp_path / "requirements-local.txt"
    local.write_text("".join(line for line in (ROOT / "requirements.txt").open()
                             if not line.startswith("--extra-index-url")))
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q", "-r", str(local)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "download.pytorch.org" not in run.stderr


def test_every_option_has_a_variable_and_the_readme_names_them():
    help_text = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], capture_output=True,
                               text=True, check=True, cwd=ROOT).stdout
    for variable in AppConfig().variables():
        assert f"[{variable}]" in help_text and f"`{variable}`" in SPACES, variable
    options = set(re.findall(r"^\s+(--[a-z-]+)", help_text, re.M)) - {"--help"}
    assert len(options) == len(AppConfig().variables())  # no flag without a variable


def test_demo_is_bound_at_module_level_when_run_as_a_script(monkeypatch):
    """A Space runs `python app.py`; Gradio's reload mode (`hf spaces hot-reload`) looks for
    `__main__.demo`."""
    import runpy

    import gradio as gr

    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.append(self))
    monkeypatch.setattr(sys, "argv", ["app.py", "--tiny"])
    monkeypatch.setenv("DENSECLIP_OUTPUT_MB", "50")
    namespace = runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
    assert isinstance(namespace["demo"], gr.Blocks) and launched == [namespace["demo"]]
    assert namespace["demo"].config.tiny and namespace["demo"].config.output_mb == 50.0
    namespace["demo"].stop_background.set()


def test_the_deploy_commands_exist_with_their_options():
    """Each `hf` command of the README's Spaces section exists in the installed CLI and takes the
    options the README gives it (a new Space: `hf upload` commits on top of its first commit)."""
    block = re.search(r"```bash\n(.*?)```", SPACES, re.S).group(1)
    commands = [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.startswith("hf ")]
    assert [c[:2] for c in commands] == [["hf", "auth"], ["hf", "repos"], ["hf", "upload"], ["hf", "spaces"]]
    hf = str(Path(sys.executable).with_name("hf"))
    for words in commands:
        sub = []
        for word in words[1:]:  # the command's words: up to its first argument (USER/SPACE, ".")
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            sub.append(word)
        help_text = subprocess.run([hf, *sub, "--help"], capture_output=True, text=True).stdout
        assert help_text.startswith("Usage: hf"), (sub, help_text[:200])
        for option in (w.split("=")[0] for w in words if w.startswith("-")):
            assert option in help_text, (sub, option)


def test_example_photos_are_credited():
    credits = README[README.index("### Credits"):]
    examples = load_examples(ROOT / "examples")
    drawn = json.loads((ROOT / "examples" / "classes.json").read_text())  # by make_examples.py
    photos = {Path(e["path"]).name for e in examples}
    assert photos | set(drawn) == {p.name for p in ROOT.glob("examples/*.jpg")} and not photos & set(drawn)
    for name in drawn:
        assert f"`{name}`" in credits and "make_examples.py" in credits
    for e in examples:
        name = Path(e["path"]).name
        row = next(line for line in credits.splitlines() if f"`{name}`" in line)
        for licence in ("CC0", "public domain"):
            assert (licence in row) == (licence in e["licence"]), (name, row)
        assert Path(e["path"]).stat().st_size < 200_000 and len(e["classes"].split(",")) >= 4
