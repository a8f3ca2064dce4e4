"""Conversions killed with SIGKILL mid-write and rerun: the output is complete and equal to that of an
uninterrupted run, and nothing half-written is ever visible as a finished output. Locally and on s3://
(a real S3-compatible server process)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from maxtoki.cli import main as cli_main
from maxtoki.data.paragraphs.build import PART_EXAMPLES


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
        assert time.monotonic() < deadline, f"{part} never appeared in the staging directory"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()  # nothing looks finished


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    # 4,800 cells: ten parts of --chunk-size 512, so that a kill after the first lands mid-run
    cli("data", "simulate", "--out", root / "sim.h5ad", "--donors", 10, "--ages-per-donor", 6,
        "--cells-per-sample", 80, "--genes", 2000, "--seed", 3)
    cli("data", "medians", root / "sim.h5ad", "--out", root / "m.json")
    # time tokens that fit the ages (Δ up to 72 at --time-scale 0.1), so paragraphs print no notice about them
    cli("data", "vocab", "--medians", root / "m.json", "--max-time", 91, "--out", root / "v.json")
    return root


def test_killed_tokenize_reruns_to_the_same_output(simulated, tmp_path):
    argv = ["data", "tokenize", simulated / "sim.h5ad", "--vocab", simulated / "v.json", "--medians",
            simulated / "m.json", "--time-column", "age", "--group-columns", "donor", "--chunk-size", 512]
    cli(*argv, "--out", tmp_path / "whole")
    kill_while_writing([*argv, "--out", tmp_path / "cells"], tmp_path / "cells", "part-00000/shard.00000.mds")
    cli(*argv, "--out", tmp_path / "cells")
    assert written_files(tmp_path / "cells") == written_files(tmp_path / "whole")
    assert not list(tmp_path.glob(".cells.partial-*"))  # the killed run's staging is gone


@pytest.fixture(scope="module")
def cells(simulated):
    """The simulated cells tokenized to 256 tokens: what the paragraphs commands read."""
    cli("data", "tokenize", simulated / "sim.h5ad", "--vocab", simulated / "v.json", "--medians",
        simulated / "m.json", "--time-column", "age", "--group-columns", "donor", "--out", simulated / "cells",
        "--model-input-size", 256)
    return simulated / "cells"


PARAGRAPHS = ["--num-examples", 3 * PART_EXAMPLES, "--seed", 5, "--time-scale", 0.1]  # killed in the second part


def test_killed_paragraphs_reruns_to_the_same_output(cells, tmp_path):
    argv = ["data", "paragraphs", cells, *PARAGRAPHS]
    cli(*argv, "--out", tmp_path / "whole")
    kill_while_writing([*argv, "--out", tmp_path / "p"], tmp_path / "p", "part-00001")
    cli(*argv, "--out", tmp_path / "p")
    assert written_files(tmp_path / "p") == written_files(tmp_path / "whole")
    assert not list(tmp_path.glob(".p.partial-*"))


SPLIT = ["--num-examples", 4000, "--seed", 5, "--time-scale", 0.1, "--split", "train=0.5,test=0.5"]


def test_killed_split_paragraphs_rerun_to_the_same_output(cells, tmp_path):
    """The killed run finished the train split; the rerun may replace it (an output of the same run)."""
    argv = ["data", "paragraphs", cells, *SPLIT]
    cli(*argv, "--out", tmp_path / "whole")
    kill_while_writing([*argv, "--out", tmp_path / "p"], tmp_path / "p" / "test", "part-00000")
    assert (tmp_path / "p" / "train" / "manifest.json").exists() and not (tmp_path / "p" / "splits.json").exists()
    cli(*argv, "--out", tmp_path / "p")
    assert written_files(tmp_path / "p") == written_files(tmp_path / "whole")
    assert not list((tmp_path / "p").glob(".test.partial-*"))


# ----- s3:// ----------------------------------------------------------------------------------
BUCKET = "maxtoki-test"


def s3_objects(prefix: str) -> dict[str, bytes]:
    """Every object under ``s3://maxtoki-test/<prefix>/`` by its name below the prefix."""
    client = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
    return {obj["Key"][len(prefix) + 1:]: client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            for page in pages for obj in page.get("Contents", [])}


def same_output(rerun: dict[str, bytes], whole: dict[str, bytes]) -> None:
    """Byte-equal objects; the manifests differ only in when and by which command line they were written."""
    assert sorted(rerun) == sorted(whole)
    assert {k: v for k, v in rerun.items() if k != "manifest.json"} == \
        {k: v for k, v in whole.items() if k != "manifest.json"}
    manifests = [json.loads(m["manifest.json"]) for m in (rerun, whole)]
    for manifest in manifests:
        del manifest["created"], manifest["command"]
    assert manifests[0] == manifests[1]


def kill_while_uploading(argv, prefix: str, key: str, env: dict) -> dict[str, bytes]:
    """Start the command and SIGKILL it once ``key`` is on the server; returns what it left there."""
    process = subprocess.Popen(command(*argv, "--out", f"s3://{BUCKET}/{prefix}"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
    deadline = time.monotonic() + 120
    while client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/{key}").get("KeyCount", 0) == 0:
        assert process.poll() is None, "the command finished before it could be killed; give it more work"
        assert time.monotonic() < deadline, f"{key} never reached the server"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = s3_objects(prefix)
    assert "manifest.json" not in left  # nothing looks finished
    return left


def rerun(argv, prefix: str, env: dict) -> str:
    """The same command again, in a process of its own; returns what it printed on stderr."""
    result = subprocess.run(command(*argv, "--out", f"s3://{BUCKET}/{prefix}"), env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.fixture
def s3_env(s3_server, tmp_path):
    """The environment of a CLI process talking to the server, with a temporary directory of its own."""
    (tmp_path / "tmp").mkdir()
    return {**os.environ, "TMPDIR": str(tmp_path / "tmp")}


def notices(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("maxtoki:")]


def started(marker: bytes) -> str:
    """How a notice names the run that left this marker."""
    marker = json.loads(marker)
    assert marker["host"] == socket.gethostname()
    return f"started {marker['started']} on {marker['host']}"


@pytest.fixture(scope="module")
def cells_on_s3(simulated, s3_server):
    """The simulated cells tokenized to 256 tokens on the server."""
    cells = f"s3://{BUCKET}/faults/paragraph-cells"
    cli("data", "tokenize", simulated / "sim.h5ad", "--vocab", simulated / "v.json", "--medians",
        simulated / "m.json", "--time-column", "age", "--group-columns", "donor", "--out", cells,
        "--model-input-size", 256)
    return cells


@pytest.mark.s3
def test_killed_tokenize_to_s3_reruns_to_the_same_output(simulated, s3_env, tmp_path):
    argv = ["data", "tokenize", simulated / "sim.h5ad", "--vocab", simulated / "v.json", "--medians",
            simulated / "m.json", "--time-column", "age", "--group-columns", "donor", "--chunk-size", 512]
    cli(*argv, "--out", f"s3://{BUCKET}/faults/whole-cells")
    left = kill_while_uploading(argv, "faults/cells", "part-00000/shard.00000.mds", s3_env)
    assert list((tmp_path / "tmp").glob("maxtoki-upload-*"))  # the killed run's local copies of its parts
    assert notices(rerun(argv, "faults/cells", s3_env)) == [
        f"maxtoki: s3://{BUCKET}/faults/cells: removing the {len(left)} objects of an unfinished run "
        f"({started(left['_maxtoki_unfinished.json'])}) and writing the output again"]
    same_output(s3_objects("faults/cells"), s3_objects("faults/whole-cells"))
    assert not list((tmp_path / "tmp").glob("maxtoki-upload-*"))  # and they are gone


@pytest.mark.s3
def test_killed_paragraphs_to_s3_reruns_to_the_same_output(cells_on_s3, s3_env):
    argv = ["data", "paragraphs", cells_on_s3, *PARAGRAPHS]
    cli(*argv, "--out", f"s3://{BUCKET}/faults/whole-paragraphs")
    left = kill_while_uploading(argv, "faults/paragraphs", "part-00001/shard.00000.mds", s3_env)
    assert notices(rerun(argv, "faults/paragraphs", s3_env)) == [
        f"maxtoki: s3://{BUCKET}/faults/paragraphs: removing the {len(left)} objects of an unfinished run "
        f"({started(left['_maxtoki_unfinished.json'])}) and writing the output again"]
    same_output(s3_objects("faults/paragraphs"), s3_objects("faults/whole-paragraphs"))


@pytest.mark.s3
def test_killed_split_paragraphs_to_s3_rerun_to_the_same_output(cells_on_s3, s3_env):
    argv = ["data", "paragraphs", cells_on_s3, *SPLIT]
    cli(*argv, "--out", f"s3://{BUCKET}/faults/whole-splits")
    left = kill_while_uploading(argv, "faults/splits", "test/part-00000/shard.00000.mds", s3_env)
    assert "train/manifest.json" in left and "splits.json" not in left
    assert notices(rerun(argv, "faults/splits", s3_env)) == [
        f"maxtoki: s3://{BUCKET}/faults/splits: replacing the splits of an unfinished run "
        f"({started(left['_maxtoki_unfinished.json'])})"]
    rerun_objects, whole = s3_objects("faults/splits"), s3_objects("faults/whole-splits")
    assert rerun_objects.pop("splits.json") == whole.pop("splits.json")
    for split in ("train", "test"):
        same_output(*({k.split("/", 1)[1]: v for k, v in objects.items() if k.startswith(f"{split}/")}
                      for objects in (rerun_objects, whole)))
    assert sorted(rerun_objects) == sorted(whole)
