"""Shards written to s3:// on a real S3-compatible server process (moto) on 127.0.0.1."""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_tokenize_shards import read_shards

from maxtoki import storage
from maxtoki.cli import main
from maxtoki.data.paragraphs.cell_store import CellStore
from maxtoki.vocab import Vocabulary

pytestmark = pytest.mark.s3


def test_tokenize_to_s3_round_trip(capsys, tmp_path, s3_server, hsmm_path, hsmm_reference):
    vocab, medians = hsmm_reference
    uri = "s3://maxtoki-test/runs/hsmm-cells"
    args = ["data", "tokenize", str(hsmm_path), "--vocab", str(vocab), "--medians", str(medians),
            "--allow-non-integer", "--time-column", "hours"]
    assert main(args + ["--out", uri]) == 0
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    keys = storage.list_keys(uri)
    assert sorted(k.rsplit("/", 2)[-2] + "/" + k.rsplit("/", 1)[-1] if "part-" in k else k.rsplit("/", 1)[-1]
                  for k in keys) == ["index.json", "manifest.json", "part-00000/index.json",
                                     "part-00000/shard.00000.mds", "vocab.json"]
    assert CellStore(uri, str(tmp_path / "store")).vocabulary().sha256 == Vocabulary.load(vocab).sha256
    remote = read_shards(uri, local=tmp_path / "cache")
    local = read_shards(tmp_path / "local")
    assert len(remote) == len(local) == 271
    for a, b in zip(remote, local):
        assert a["cell_id"] == b["cell_id"] and a["time"] == b["time"]
        assert np.array_equal(a["input_ids"], b["input_ids"])
    manifest = json.loads(storage.download_bytes(uri + "/manifest.json"))
    assert manifest["cells"]["written"] == 271
    capsys.readouterr()
    # an existing remote output is refused, and replaced with --overwrite
    assert main(args + ["--out", uri]) == 2
    assert "holds a finished output" in capsys.readouterr().err
    assert main(args + ["--out", uri, "--overwrite"]) == 0


def test_objects_maxtoki_did_not_write_are_kept_and_failed_runs_leave_nothing(capsys, s3_server, tiny_files):
    vocab, medians, write = tiny_files
    uri = "s3://maxtoki-test/runs/foreign"
    storage.upload_bytes(uri + "/results/table.csv", b"a user's own data")
    good = write("good.h5ad", [[1, 0, 0, 0, 0]])
    bad = write("bad.h5ad", [[0.5, 0, 0, 0, 0]])
    args = ["data", "tokenize", "--vocab", str(vocab), "--medians", str(medians), "--out", uri]
    assert main(args + [str(good)]) == 2
    assert capsys.readouterr().err == (
        f"maxtoki: error: {uri}: holds 1 object but no manifest.json, so maxtoki did not write them (its unfinished "
        "runs leave _maxtoki_unfinished.json); choose another --out, or pass --overwrite to delete them\n")
    assert storage.download_bytes(uri + "/results/table.csv") == b"a user's own data"
    # a run that fails validation removes what it uploaded: nothing looks complete afterwards
    assert main(args + [str(good), str(bad), "--overwrite"]) == 2
    assert storage.list_keys(uri) == []


def test_an_output_that_a_live_process_writes_is_not_replaced(capsys, s3_server, tiny_files):
    vocab, medians, write = tiny_files
    uri = "s3://maxtoki-test/runs/being-written"
    good = write("good.h5ad", [[1, 0, 0, 0, 0]])
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        storage.upload_bytes(uri + "/_maxtoki_unfinished.json", json.dumps({
            "command": "maxtoki data tokenize a.h5ad", "host": socket.gethostname(), "pid": writer.pid,
            "started": "2025-01-02T03:04:05+00:00"}).encode())
        storage.upload_bytes(uri + "/part-00000/shard.00000.mds", b"being written")
        args = ["data", "tokenize", str(good), "--vocab", str(vocab), "--medians", str(medians), "--out", uri]
        assert main(args) == 2
        assert capsys.readouterr().err == (
            f"maxtoki: error: {uri}: process {writer.pid} on this machine is writing it now (maxtoki data tokenize "
            "a.h5ad); wait for it to finish, or choose another --out\n")
        assert storage.download_bytes(uri + "/part-00000/shard.00000.mds") == b"being written"
    finally:
        writer.kill()
        writer.wait()
    # once that process is gone, what it left is an unfinished run: replaced by a complete output
    assert main(args) == 0
    assert capsys.readouterr().err == (
        f"maxtoki: {uri}: removing the 2 objects of an unfinished run (started 2025-01-02T03:04:05+00:00 on "
        f"{socket.gethostname()}) and writing the output again\n")
    assert sorted(k.split("being-written/")[1] for k in storage.list_keys(uri)) == [
        "index.json", "manifest.json", "part-00000/index.json", "part-00000/shard.00000.mds", "vocab.json"]
    assert json.loads(storage.download_bytes(uri + "/manifest.json"))["cells"]["written"] == 1


def test_unreachable_server_fails_fast(capsys, tiny_files, monkeypatch):
    """Reported in one line naming the endpoint, after the storage client's retries (3, each refused at once)
    rather than the two minutes of retries that training gives its checkpoint uploads."""
    from helpers.ports import connection_attempts, free_port

    vocab, medians, write = tiny_files
    port = free_port()  # nothing listens there
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    good = write("good.h5ad", [[1, 0, 0, 0, 0]])
    attempts = connection_attempts(monkeypatch, port)
    assert main(["data", "tokenize", str(good), "--vocab", str(vocab), "--medians", str(medians),
                 "--out", "s3://nowhere/cells"]) == 2
    assert capsys.readouterr().err == (
        f"maxtoki: error: s3://nowhere/cells: cannot reach the S3 server at http://127.0.0.1:{port}; check "
        "S3_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 and that the server is running\n")
    assert len(attempts) == 4  # the first and 3 retries


def test_one_s3_client_per_process_and_settings(monkeypatch):
    """Made once and shared (a new client reads botocore's service descriptions again); another endpoint,
    other credentials or another process get a client of their own."""
    import multiprocessing

    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    first = storage.s3_client()
    assert storage.s3_client() is first and first.meta.endpoint_url == "http://127.0.0.1:1"
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:2")
    second = storage.s3_client()
    assert second is not first and second.meta.endpoint_url == "http://127.0.0.1:2"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "other")
    assert storage.s3_client() is not second
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    assert storage.s3_client() is second
    with multiprocessing.get_context("fork").Pool(1) as pool:  # a forked child never uses its parent's connections
        assert pool.apply(_made_in_this_process)


def _made_in_this_process() -> bool:
    inherited = [id(client) for client in storage._clients.values()]
    return bool(inherited) and id(storage.s3_client()) not in inherited


def test_paragraphs_from_s3_cells_to_s3(tmp_path, s3_server, hsmm_path, hsmm_reference):
    from maxtoki.data.paragraphs.cell_store import CellStore

    vocab, medians = hsmm_reference
    cells = "s3://maxtoki-test/runs/paragraph-cells"
    assert main(["data", "tokenize", str(hsmm_path), "--vocab", str(vocab), "--medians", str(medians),
                 "--allow-non-integer", "--time-column", "hours", "--out", cells]) == 0
    args = ["--num-examples", "60", "--seed", "4", "--max-seq-len", "12000"]
    assert main(["data", "paragraphs", cells, "--out", "s3://maxtoki-test/runs/paragraphs", *args]) == 0
    assert main(["data", "paragraphs", cells, "--out", str(tmp_path / "local"), *args]) == 0
    remote = list(CellStore("s3://maxtoki-test/runs/paragraphs", str(tmp_path / "cache")))
    local = list(CellStore(str(tmp_path / "local")))
    assert len(remote) == len(local) == 60
    for a, b in zip(remote, local):
        assert np.array_equal(a["input_ids"], b["input_ids"]) and a["timelapse"] == b["timelapse"]
    keys = storage.list_keys("s3://maxtoki-test/runs/paragraphs")
    assert any(k.endswith("/blueprint.npz") for k in keys) and any(k.endswith("/manifest.json") for k in keys)


def test_training_loaders_stream_from_s3(s3_server, tmp_path, hsmm_path, hsmm_reference):
    from maxtoki.data.loaders import build_cells_loader

    vocab, medians = hsmm_reference
    cells = "s3://maxtoki-test/runs/loader-cells"
    assert main(["data", "tokenize", str(hsmm_path), "--vocab", str(vocab), "--medians", str(medians),
                 "--allow-non-integer", "--out", cells, "--model-input-size", "64"]) == 0
    spec = build_cells_loader(dataset={"remote": cells, "vocab": str(vocab), "max_seq_len": 64, "shuffle": False,
                                       "local": str(tmp_path / "cache")}, device_batch_size=8)
    batches = list(spec.dataloader)
    assert len(batches) == 271 // 8
    assert batches[0]["input_ids"].shape == (8, 64) and spec.get_num_tokens_in_batch(batches[0]) == 8 * 64
