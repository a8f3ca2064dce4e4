"""The object store goes away during training and comes back: nothing is lost.

A short outage is ridden out (the uploads retry and the run finishes by itself); a long one stops the run
with a clear message, and the same command resumes from the last checkpoint that reached the bucket and
finishes. The server is a real process, stopped and started again on the same port.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tokenize_hsmm
from helpers.restartable_s3 import RestartableS3Server

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "maxtoki-outage"
RUN = f"s3://{BUCKET}/run"
BATCHES_PER_EPOCH = 33  # 271 cells in batches of 8, the last partial batch dropped

pytestmark = pytest.mark.s3


@pytest.fixture
def server():
    server = RestartableS3Server(BUCKET)
    server.start()
    yield server
    if server.process is not None:
        server.stop()


@pytest.fixture(scope="module")
def cells(tmp_path_factory, hsmm_path, hsmm_compact):
    vocab, medians = hsmm_compact
    out = tmp_path_factory.mktemp("outage") / "cells"
    tokenize_hsmm(hsmm_path, vocab, medians, str(out), 64)
    return out, vocab


def train(server, cells, tmp_path, log_name, batches, every, **env):
    """Start ``scripts/train.py`` on stage 1 for ``batches`` batches with a checkpoint on the server ``every``
    so many; its output goes to a file."""
    data, vocab = cells
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "S3_ENDPOINT_URL": server.endpoint, "PYTHONUNBUFFERED": "1", **env}
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), str(ROOT / "configs" / "pretrain" / "tiny-cpu.yaml"),
               f"variables.data={data}", f"variables.vocab={vocab}", "max_seq_len=64", f"save_folder={RUN}",
               f"max_duration={batches}ba", f"save_interval={every}ba", f"eval_interval={batches}ba",
               "eval_subset_num_batches=1", "global_train_batch_size=8", "device_train_microbatch_size=8",
               "log_to_console=true", "console_log_interval=10ba", "loggers={}"]  # [batch=N/M] lines
    log = open(tmp_path / log_name, "w")
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition, timeout, what, child=None, log: Path | None = None):
    """Wait for ``condition``; a training ``child`` that exits first fails at once, with the end of its ``log``."""
    deadline = time.time() + timeout
    while not condition():
        if child is not None and child.poll() is not None:
            raise AssertionError(f"training exited ({child.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def latest(server) -> int:
    """The batch of the checkpoint that the bucket's latest-rank0.pt.symlink names."""
    body = server.client().get_object(Bucket=BUCKET, Key="run/latest-rank0.pt.symlink")["Body"].read().decode()
    return int(re.search(r"-ba(\d+)-", body).group(1))


def checkpoints(server) -> list[int]:
    return sorted(int(m.group(1)) for k in server.keys() if (m := re.search(r"-ba(\d+)-rank0\.pt$", k)))


def logged_batches(log: Path) -> list[int]:
    return [int(b) for b in re.findall(r"\[batch=(\d+)/\d+\]", log.read_text())]


def checkpoint_key(batch: int) -> str:
    return f"run/ep{batch // BATCHES_PER_EPOCH}-ba{batch}-rank0.pt"


def stop_once_on_s3(server, key):
    wait_for(lambda: key in server.keys(), 300, f"{key} on S3")
    server.stop()


def test_a_short_outage_is_ridden_out(server, cells, tmp_path):
    """The store goes away once the first checkpoint is on it and comes back once training has saved the
    next one, whose upload retries meanwhile: the run finishes by itself with every checkpoint on the store."""
    batches, every, log = 100, 25, tmp_path / "train.log"
    child = train(server, cells, tmp_path, "train.log", batches, every)
    stop_once_on_s3(server, checkpoint_key(every))
    during = (max(logged_batches(log), default=0) // every + 1) * every  # not saved yet: its batch is not logged
    assert during < batches, "training outran the first upload; give it more batches"
    wait_for(lambda: max(logged_batches(log), default=0) > during, 300, f"the checkpoint of batch {during}", child, log)
    server.start()
    assert child.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert latest(server) == batches
    assert checkpoints(server) == list(range(every, batches + 1, every))  # including the one saved in the outage
    assert logged_batches(log) == [1, *range(10, batches + 1, 10)]  # one run, start to end


@pytest.mark.slow  # two runs and an outage: about 3.5 minutes
def test_a_long_outage_stops_the_run_and_the_same_command_finishes_it(server, cells, tmp_path):
    batches, every = 400, 50  # long enough to link a checkpoint before the outage
    # one attempt per upload stands for an outage longer than the retries (about two minutes by default)
    child = train(server, cells, tmp_path, "first.log", batches, every, AWS_MAX_ATTEMPTS="1")
    stop_once_on_s3(server, "run/latest-rank0.pt.symlink")
    assert child.wait(timeout=600) == 2
    first = (tmp_path / "first.log").read_text()
    assert "maxtoki: error: lost the object store during training" in first
    assert "rerun the same command" in first and "Traceback" not in first
    server.start()
    resumed_from = latest(server)
    assert 0 < resumed_from < batches
    # a checkpoint uploaded but never linked (linking waits until the run sees the upload; a copy stands in for
    # one when the outage came after the link): the rerun resumes from the linked one and replaces it on its way
    unlinked = checkpoint_key(resumed_from + every)
    if unlinked not in server.keys():
        server.client().copy_object(Bucket=BUCKET, Key=unlinked, CopySource={
            "Bucket": BUCKET, "Key": checkpoint_key(resumed_from)})
    child = train(server, cells, tmp_path, "again.log", batches, every)
    assert child.wait(timeout=600) == 0, (tmp_path / "again.log").read_text()[-3000:]
    assert latest(server) == batches
    assert checkpoints(server)[-1] == batches
    notice = next(line for line in (tmp_path / "again.log").read_text().splitlines() if "never linked" in line)
    assert unlinked.split("/")[-1] in notice
    resumed = logged_batches(tmp_path / "again.log")
    assert resumed[0] == resumed_from + 1 and resumed[-1] == batches  # from the checkpoint, not from scratch
