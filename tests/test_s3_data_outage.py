"""The object store goes away while training streams its data from it, and comes back.

The cells lie on a real S3-compatible server in many small shards (one per input file, 15 batches each),
read in order with little read-ahead, so training downloads a new shard every 15 batches to the end;
checkpoints are local. A short outage is ridden out (the downloads retry and the run finishes by itself); a long one
stops the run with one line, and the same command resumes from the last checkpoint and finishes. The
server is a real process, stopped and started again on the same port.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import pytest
from helpers.restartable_s3 import RestartableS3Server

from maxtoki.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "maxtoki-data-outage"
DATA = f"s3://{BUCKET}/cells"
BATCHES = 140
SHARDS_READ = 10  # 140 batches of 8 cells from shards of 120 cells (one donor each)

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """12 donors of 120 cells, one .h5ad file each (training reads 10), with their vocabulary and medians."""
    root = tmp_path_factory.mktemp("data_outage")
    for argv in (["data", "simulate", "--out", root / "sim.h5ad", "--donors", 12, "--ages-per-donor", 6,
                  "--cells-per-sample", 20, "--genes", 500, "--seed", 3],
                 ["data", "medians", root / "sim.h5ad", "--out", root / "medians.json"],
                 ["data", "vocab", "--medians", root / "medians.json", "--out", root / "vocab.json"]):
        assert cli_main([str(a) for a in argv]) == 0
    cells = ad.read_h5ad(root / "sim.h5ad")
    (root / "inputs").mkdir()
    for donor in sorted(cells.obs["donor"].unique()):
        cells[cells.obs["donor"] == donor].copy().write_h5ad(root / "inputs" / f"{donor}.h5ad")
    return root


@pytest.fixture(scope="module")
def store(inputs):
    server = RestartableS3Server(BUCKET)
    server.start()
    tokenize = subprocess.run([sys.executable, "-m", "maxtoki.cli", "data", "tokenize", str(inputs / "inputs"),
                               "--vocab", str(inputs / "vocab.json"), "--medians", str(inputs / "medians.json"),
                               "--model-input-size", "64", "--out", DATA], env=s3_env(server),
                              capture_output=True, text=True)
    assert tokenize.returncode == 0, tokenize.stderr
    yield server
    if server.process is not None:
        server.stop()


@pytest.fixture
def server(store):
    """The module's server, running (a failed test may have left it stopped)."""
    if store.process is None:
        store.start()
    return store


@pytest.fixture
def children():
    """Training processes a test started; any still running when it ends (a failed test) are killed."""
    started = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
            child.wait()


def s3_env(server, **extra) -> dict:
    return {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "S3_ENDPOINT_URL": server.endpoint, "PYTHONUNBUFFERED": "1", **extra}


def train(server, inputs, tmp_path, children, log_name, workers, **env):
    """Start ``scripts/train.py`` on stage 1 reading the server's cells in order; checkpoints and caches local.
    Two keys users need not set: the streaming cache goes where the test watches shards arrive (by default each
    run gets its own under MAXTOKI_CACHE), and batches are logged as lines to count them."""
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), str(ROOT / "configs" / "pretrain" / "tiny-cpu.yaml"),
               f"variables.data={DATA}", f"variables.vocab={inputs / 'vocab.json'}", "max_seq_len=64",
               f"save_folder={tmp_path / 'run'}", f"max_duration={BATCHES}ba", "save_interval=50ba",
               f"eval_interval={BATCHES}ba", "eval_subset_num_batches=1", "global_train_batch_size=8",
               "device_train_microbatch_size=8", "log_to_console=true", "console_log_interval=10ba", "loggers={}",
               "train_loader.dataset.shuffle=false", "train_loader.dataset.predownload=8",
               f"train_loader.dataset.local={tmp_path / 'train-cache'}", f"train_loader.num_workers={workers}"]
    with open(tmp_path / log_name, "w") as log:
        children.append(subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                         env=s3_env(server, MAXTOKI_CACHE=str(tmp_path / "cache"), **env)))
    return children[-1]


def shards_read(tmp_path) -> list[str]:
    return sorted(p.parent.name for p in (tmp_path / "train-cache").glob("part-*/shard.00000.mds"))


def shards_requested(tmp_path) -> list[str]:
    """The shards training has begun to download: streaming makes a shard's directory before it downloads it."""
    return sorted(p.name for p in (tmp_path / "train-cache").glob("part-*"))


def wait_while_training(child, condition, what: str) -> None:
    deadline = time.time() + 300
    while not condition():
        assert child.poll() is None, f"training ended before {what}"
        assert time.time() < deadline, f"timed out before {what}"
        time.sleep(0.05)


def stop_once_read(server, child, tmp_path, part: str) -> list[str]:
    """Stop the server as soon as training has downloaded ``part``; returns the shards it had then."""
    wait_while_training(child, lambda: part in shards_read(tmp_path), f"it read {part}")
    server.stop()
    return shards_read(tmp_path)


def logged_batches(log: Path) -> list[int]:
    return [int(b) for b in re.findall(rf"\[batch=(\d+)/{BATCHES}\]", log.read_text())]


def latest(tmp_path) -> int:
    return int(re.search(r"-ba(\d+)-", os.readlink(tmp_path / "run" / "latest-rank0.pt")).group(1))


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_a_short_outage_is_ridden_out(server, inputs, tmp_path, children, workers):
    """The store goes away once training has read a few shards, and stays away while it asks for the next:
    training waits (the downloads retry), reads the rest once the store is back and finishes by itself."""
    child = train(server, inputs, tmp_path, children, "train.log", workers)
    before = stop_once_read(server, child, tmp_path, "part-00003")
    wait_while_training(child, lambda: len(shards_requested(tmp_path)) > len(before), "it asked for the next shard")
    time.sleep(5)
    assert child.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
    assert shards_read(tmp_path) == before and len(before) < SHARDS_READ  # waiting for a shard it cannot get
    server.start()
    assert child.wait(timeout=300) == 0, (tmp_path / "train.log").read_text()[-3000:]
    assert len(shards_read(tmp_path)) == SHARDS_READ  # the rest came after the outage
    assert logged_batches(tmp_path / "train.log") == [1, *range(10, BATCHES + 1, 10)]  # one run, start to end
    assert latest(tmp_path) == BATCHES


@pytest.mark.slow  # two runs and an outage, for each number of loader workers
@pytest.mark.parametrize("workers", [0, 1])
def test_a_long_outage_stops_the_run_and_the_same_command_finishes_it(server, inputs, tmp_path, children, workers):
    # one attempt per download stands for an outage longer than the retries (a minute or two)
    child = train(server, inputs, tmp_path, children, "first.log", workers, AWS_MAX_ATTEMPTS="1")
    stop_once_read(server, child, tmp_path, "part-00007")  # batch 105: the checkpoint of batch 100 is saved
    code = child.wait(timeout=120)
    first = (tmp_path / "first.log").read_text()
    assert code == 2, first[-3000:]
    errors = [line for line in first.splitlines() if line.startswith("maxtoki: error:")]
    assert len(errors) == 1, first[-3000:]
    assert errors[0].startswith("maxtoki: error: lost the object store while reading training data (")
    assert errors[0].endswith("; rerun the same command to resume")
    assert "Traceback" not in first
    assert max(logged_batches(tmp_path / "first.log")) < BATCHES
    resumed_from = latest(tmp_path)
    assert resumed_from == 100
    server.start()
    child = train(server, inputs, tmp_path, children, "again.log", workers)
    assert child.wait(timeout=300) == 0, (tmp_path / "again.log").read_text()[-3000:]
    resumed = logged_batches(tmp_path / "again.log")
    assert resumed[0] == resumed_from + 1 and resumed[-1] == BATCHES  # from the checkpoint, not from scratch
    assert latest(tmp_path) == BATCHES
