"""The Hugging Face Space configuration: README.md's front matter, read with huggingface_hub's card parser,
matches what the app offers and needs (every offered model's weights preloaded, the Gradio range)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import RepoCard
from packaging.requirements import Requirement
from packaging.version import Version

from webapp.catalog import ZERO_SHOT_MODELS, hub_weights, load_examples

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def card() -> dict:
    return RepoCard.load(ROOT / "README.md").data.to_dict()


def test_front_matter_runs_this_app(card):
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py" and (ROOT / card["app_file"]).is_file()
    assert card["python_version"] == "3.11" and card["license"] == "apache-2.0"
    assert len(card["short_description"]) <= 60  # the Hub's limit


def test_every_offered_model_is_preloaded(card):
    preloaded = {}
    for entry in card["preload_from_hub"]:
        repo, _, files = entry.partition(" ")
        preloaded[repo] = set(files.split(",")) if files else {"*"}
    for model in ZERO_SHOT_MODELS:
        repo, filename = hub_weights(model.clip)
        files = preloaded.get(repo, set())
        assert filename in files or "*" in files, (model.label, repo)
        assert repo in card["models"]


def test_sdk_version_is_in_the_gradio_range(card):
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    gradio = Requirement(next(line for line in lines if re.match(r"gradio\b", line)))
    assert Version(card["sdk_version"]) in gradio.specifier
    assert gradio.specifier.contains("7.0") is False  # the next major is not promised to work


def test_example_photos_are_credited():
    readme = (ROOT / "README.md").read_text("utf-8")
    credits = readme[readme.index("### Credits"):]
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
