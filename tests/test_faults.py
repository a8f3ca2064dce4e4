"""Conversions killed with SIGKILL mid-write and rerun: the output is complete and equal to that of an
uninterrupted run, and nothing half-written is ever visible as a finished output."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maxtoki.cli import main as cli_main


def cli(*argv):
    assert cli_main([str(a) for a in argv]) == 0


def command(*argv):
    return [sys.executable, "-m", "maxtoki.cli", *map(str, argv)]


def written_files(root: Path) -> dict[str, bytes]:
    """Every file of an output except the manifest (which records times and durations)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def kill_while_writing(argv, out: Path, part: str) -> None:
    """Start the command and SIGKILL it once its staging directory holds ``part``."""
    process = subprocess.Popen(command(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(f".{out.name}.partial-*/{part}")):
        assert process.poll() is None, "the command finished before it could be killed; give it more work"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()  # nothing looks finished


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    cli("data", "simulate", "--out", root / "sim.h5ad", "--donors", 40, "--ages-per-donor", 6,
        "--cells-per-sample", 80, "--genes", 2000, "--seed", 3)
    cli("data", "medians", root / "sim.h5ad", "--out", root / "m.json")
    cli("data", "vocab", "--medians", root / "m.json", "--out", root / "v.json")
    return root


def test_killed_tokenize_reruns_to_the_same_output(simulated, tmp_path):
    argv = ["data", "tokenize", simulated / "sim.h5ad", "--vocab", simulated / "v.json", "--medians",
            simulated / "m.json", "--time-column", "age", "--group-columns", "donor", "--chunk-size", 512]
    cli(*argv, "--out", tmp_path / "whole")
    kill_while_writing([*argv, "--out", tmp_path / "cells"], tmp_path / "cells", "part-00000/shard.00000.mds")
    cli(*argv, "--out", tmp_path / "cells")
    assert written_files(tmp_path / "cells") == written_files(tmp_path / "whole")
    assert not list(tmp_path.glob(".cells.partial-*"))  # the killed run's staging is gone


def test_killed_paragraphs_reruns_to_the_same_output(simulated, tmp_path):
    cli("data", "tokenize", simulated / "sim.h5ad", "--vocab", simulated / "v.json", "--medians",
        simulated / "m.json", "--time-column", "age", "--group-columns", "donor", "--out", tmp_path / "cells",
        "--model-input-size", 256)
    argv = ["data", "paragraphs", tmp_path / "cells", "--num-examples", 6000, "--seed", 5, "--time-scale", 0.1]
    cli(*argv, "--out", tmp_path / "whole")
    kill_while_writing([*argv, "--out", tmp_path / "p"], tmp_path / "p", "part-00001")
    cli(*argv, "--out", tmp_path / "p")
    assert written_files(tmp_path / "p") == written_files(tmp_path / "whole")
    assert not list(tmp_path.glob(".p.partial-*"))
