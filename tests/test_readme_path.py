"""The README's step-by-step path (steps 1-8) as users copy it, with the tiny recipes as shipped, learns time:
it beats the training-mean baseline and comes within 1.3 x of `maxtoki pipeline` on the same data and split.
Slow (two trainings of a few minutes each); the default run parses and runs the same commands on tiny data
(tests/test_documented_commands.py)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from maxtoki.cli import main as cli_main
from maxtoki.training import main as train_main

ROOT = Path(__file__).resolve().parent.parent


def readme_steps() -> dict[int, list[str]]:
    """Step number -> the words of its (first) command, from the README's table ``| N. what | `command` |``."""
    rows = re.findall(r"^\| (\d+)\. [^|]+\| `([^`]+)`", (ROOT / "README.md").read_text(), re.M)
    return {int(step): shlex.split(command) for step, command in rows}


def run_step(words: list[str]) -> None:
    if words[0] == "maxtoki":
        assert cli_main(words[1:]) == 0, " ".join(words)
    else:  # composer scripts/train.py RECIPE key=value ...: the entry point scripts/train.py calls, in-process
        assert words[:2] == ["composer", "scripts/train.py"], words
        assert train_main(words[2:]) == 0, " ".join(words)


@pytest.mark.slow
def test_the_readme_steps_as_shown_learn_time_like_the_pipeline(tmp_path, monkeypatch, capsys):
    """A corpus as the README has it: donors (16) at ages in months (4 each, 240-960), two cell types; 15 cells per
    donor and age, 400 genes."""
    monkeypatch.chdir(tmp_path)
    for shared in ("configs", "scripts"):  # the commands name the recipes relative to the repository
        (tmp_path / shared).symlink_to(ROOT / shared)
    assert cli_main(["--quiet", "data", "simulate", "--out", "corpus/donors.h5ad", "--donors", "16",
                     "--ages-per-donor", "4", "--cells-per-sample", "15", "--genes", "400"]) == 0
    steps = readme_steps()
    assert sorted(steps) == list(range(1, 11))
    for step in range(1, 9):
        run_step(steps[step])
    readme = json.loads(Path("predictions/metrics.json").read_text())
    split = steps[4][steps[4].index("--split") + 1]  # the same donors held out, and the same seed
    assert cli_main(["--quiet", "pipeline", "corpus/donors.h5ad", "--time-column", "age", "--group-columns", "donor",
                     "--split", split, "--out", "pipeline"]) == 0
    pipeline = json.loads(Path("pipeline/predictions/metrics.json").read_text())
    with capsys.disabled():
        print(f"\nREADME steps: MAE {readme['model']['mae']:.1f}, r {readme['model']['pearson_r']:.2f} "
              f"(training mean {readme['baseline_training_mean']['mae']:.1f}); pipeline: MAE "
              f"{pipeline['model']['mae']:.1f}, r {pipeline['model']['pearson_r']:.2f}")
    held_out = [json.loads(Path(out, "splits.json").read_text())["groups"]["test"] for out in ("eval", "pipeline/eval")]
    assert held_out[0] == held_out[1] and held_out[0]  # scored on the same donors
    assert readme["model"]["mae"] < readme["baseline_training_mean"]["mae"]
    assert readme["model"]["mae"] <= 1.3 * pipeline["model"]["mae"]
    assert readme["warning"] is None  # not a constant
