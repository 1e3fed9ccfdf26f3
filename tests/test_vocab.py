"""Tests for denseclip.vocab: benchmark class lists, name parsing/cleaning, prompt templates."""

from __future__ import annotations

import pytest

from denseclip import vocab
from denseclip.vocab import (
    ADE20K_CLASSES,
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    COCO_STUFF_CLASSES,
    DATASET_CLASSES,
    PASCAL_CONTEXT59_CLASSES,
    PASCAL_CONTEXT_CLASSES,
    PASCAL_VOC_CLASSES,
    SIMPLE_TEMPLATES,
    clean_class_names,
    get_class_names,
    get_templates,
    validate_template,
)

EXPECTED_LENGTHS = {"ade20k": 150, "coco-stuff": 171, "voc": 21, "pascal-context": 60,
                    "pascal-context-59": 59, "coco": 80}


@pytest.mark.parametrize("key", sorted(EXPECTED_LENGTHS))
def test_dataset_lists_have_right_length_and_no_duplicates(key):
    names = DATASET_CLASSES[key]
    assert isinstance(names, tuple) and len(names) == EXPECTED_LENGTHS[key]
    assert len({n.strip().casefold() for n in names}) == len(names)
    assert all(isinstance(n, str) and n.strip() for n in names)


def test_dataset_keys():
    assert set(DATASET_CLASSES) == set(EXPECTED_LENGTHS)


def test_known_positions():
    assert ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[-1] == "flag"
    assert ADE20K_CLASSES[12] == "person" and ADE20K_CLASSES[20] == "car"
    assert ADE20K_CLASSES[7] == "bed "  # mmseg's exact spelling, trailing space included
    assert ADE20K_CLASSES[148] == "clock" and ADE20K_CLASSES[44] == "chest of drawers"
    assert COCO_STUFF_CLASSES[0] == "person" and COCO_STUFF_CLASSES[80] == "banner"
    assert COCO_STUFF_CLASSES[-1] == "wood" and COCO_STUFF_CLASSES[79] == "toothbrush"
    assert PASCAL_VOC_CLASSES[0] == "background" and PASCAL_VOC_CLASSES[15] == "person"
    assert PASCAL_VOC_CLASSES[-1] == "tvmonitor"
    assert PASCAL_CONTEXT_CLASSES[:3] == ("background", "aeroplane", "bag")
    assert PASCAL_CONTEXT_CLASSES[-1] == "wood"
    assert PASCAL_CONTEXT59_CLASSES == PASCAL_CONTEXT_CLASSES[1:]
    assert "background" not in PASCAL_CONTEXT59_CLASSES
    assert COCO_CLASSES[0] == "person" and COCO_CLASSES[-1] == "toothbrush"
    assert COCO_CLASSES == COCO_STUFF_CLASSES[:80]


def test_coco_category_ids():
    ids = COCO_CATEGORY_IDS
    assert len(ids) == 80 == len(COCO_CLASSES)
    assert all(a < b for a, b in zip(ids, ids[1:]))
    assert ids[0] == 1 and ids[-1] == 90
    assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    by_name = dict(zip(COCO_CLASSES, ids))
    assert by_name["stop sign"] == 13 and by_name["toothbrush"] == 90 and by_name["tv"] == 72


# --------------------------------------------------------------------------------- get_class_names

def test_get_class_names_from_key():
    assert get_class_names("voc") == PASCAL_VOC_CLASSES
    assert get_class_names("ADE20K")[7] == "bed"  # cleaned; the raw constant keeps 'bed '
    assert len(get_class_names("ade20k")) == 150
    assert get_class_names("Pascal_Context_59") == PASCAL_CONTEXT59_CLASSES
    assert get_class_names("coco-stuff") == COCO_STUFF_CLASSES


def test_get_class_names_from_string_and_list():
    assert get_class_names("cat, dog ,  grass") == ("cat", "dog", "grass")
    assert get_class_names("cat\ndog,\n\nsky,") == ("cat", "dog", "sky")
    assert get_class_names(["  potted   plant ", "sky"]) == ("potted plant", "sky")
    assert get_class_names(("a",)) == ("a",)


def test_get_class_names_from_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("# my classes\n\nwall\n  stop   sign  \ncafé  # inline comment\n東京タワー\n"
                    "building, edifice\n", encoding="utf-8")
    expected = ("wall", "stop sign", "café", "東京タワー", "building, edifice")
    assert get_class_names(path) == expected
    assert get_class_names(str(path)) == expected
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffwall\nsky\n".encode())
    assert get_class_names(bom) == ("wall", "sky")


def test_get_class_names_errors(tmp_path):
    with pytest.raises(ValueError, match="ade20k.*coco-stuff"):  # lists valid keys
        get_class_names("ade21k")
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        get_class_names(missing)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        get_class_names(str(missing))
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no names"):
        get_class_names(empty)
    with pytest.raises(ValueError, match="no class names"):
        get_class_names([])
    with pytest.raises(ValueError, match="no class names"):
        get_class_names(" , ,")
    with pytest.raises(TypeError):
        get_class_names(42)


# ------------------------------------------------------------------------------- clean_class_names

def test_clean_class_names():
    assert clean_class_names(["  a  b ", "c\td", "naïve"]) == ("a b", "c d", "naïve")
    # NFC: a decomposed "é" equals the composed one
    assert clean_class_names(["cafe\u0301"]) == ("caf\u00e9",)


def test_clean_rejects_blank_with_position():
    with pytest.raises(ValueError, match="position 1"):
        clean_class_names(["sky", "   ", "road"])
    with pytest.raises(ValueError, match="position 0"):
        clean_class_names([""])


def test_clean_duplicates_and_dedupe():
    with pytest.raises(ValueError, match="'Sky' at position 2 repeats 'sky' at position 0.*dedupe=True"):
        clean_class_names(["sky", "road", "Sky "])
    assert clean_class_names(["sky", "road", "Sky ", "road", "tree"], dedupe=True) == ("sky", "road", "tree")
    assert get_class_names("a, b, A", dedupe=True) == ("a", "b")


def test_clean_type_errors():
    with pytest.raises(TypeError, match="get_class_names"):
        clean_class_names("cat, dog")
    with pytest.raises(TypeError, match="position 1"):
        clean_class_names(["cat", 3])


# --------------------------------------------------------------------------------------- templates

def test_template_sets():
    sets = vocab.TEMPLATE_SETS
    assert set(sets) == {"single", "simple", "imagenet"}
    assert sets["single"] == ("a photo of a {}.",)
    assert sets["simple"] == SIMPLE_TEMPLATES and 5 <= len(SIMPLE_TEMPLATES) <= 10
    imagenet = vocab.IMAGENET_TEMPLATES
    assert len(imagenet) == 80 and len(set(imagenet)) == 80
    assert "a bad photo of a {}." in imagenet
    for templates in sets.values():
        assert all(isinstance(t, str) and t.count("{}") == 1 for t in templates)
        assert all(t.format("cat").count("cat") >= 1 for t in templates)


def test_get_templates():
    assert get_templates("Simple") == SIMPLE_TEMPLATES
    assert len(get_templates("imagenet")) == 80
    assert get_templates("a sketch of a {}.") == ("a sketch of a {}.",)
    assert get_templates(["a {}.", "the {}."]) == ("a {}.", "the {}.")
    with pytest.raises(ValueError, match="single, simple, imagenet"):
        get_templates("fancy")
    with pytest.raises(ValueError, match="exactly one"):
        get_templates(["a {} and a {}."])
    with pytest.raises(ValueError, match="exactly one"):
        get_templates("a photo of a {name}.")
    with pytest.raises(ValueError, match="no prompt templates"):
        get_templates([])
    with pytest.raises(TypeError):
        validate_template(3)


def test_import_is_lazy_about_open_clip():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(vocab.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    code = ("import sys, denseclip.vocab as v; assert 'open_clip' not in sys.modules; "
            "v.TEMPLATE_SETS; assert 'open_clip' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
