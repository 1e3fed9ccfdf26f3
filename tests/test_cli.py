"""The denseclip-scoremaps command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from denseclip.cli import main

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "beach.jpg")


def test_tiny_zero_shot_prints_a_row_per_class_and_writes_a_figure(tmp_path, capsys):
    fig = tmp_path / "maps.png"
    assert main([EXAMPLE, "--classes", "sky, sea, sand", "--tiny", "--figure", str(fig)]) == 0
    out = capsys.readouterr()
    rows = out.out.strip().splitlines()
    assert rows[0].split()[:2] == ["class", "pixels"]
    assert sorted(r.split()[0] for r in rows[1:]) == ["sand", "sea", "sky"]
    assert sum(float(r.split()[1]) for r in rows[1:]) == pytest.approx(100, abs=0.05)
    assert fig.stat().st_size > 1000 and "RANDOM" in out.err


def test_single_class_name_is_a_class_not_a_dataset_key(capsys):
    assert main([EXAMPLE, "--classes", "sky", "--tiny"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "sky"


def test_trained_checkpoint(tmp_path, capsys):
    import denseclip

    model = denseclip.build_model("denseclip-tiny-rn", pretrained=False)
    denseclip.save_checkpoint(model, tmp_path / "ckpt")
    assert main([EXAMPLE, "--checkpoint", str(tmp_path / "ckpt")]) == 0
    assert "probability" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.jpg"), "--classes", "a", "--tiny"]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert main([EXAMPLE, "--classes", "sky", "--pretrained", "openai"]) == 2  # offline in tests
    assert "DENSECLIP_WEIGHTS_DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([EXAMPLE])  # no classes
