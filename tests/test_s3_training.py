"""Both training stages stream from s3:// and checkpoint to s3://, resume from there, and the inference
commands read checkpoints and data from s3://, all against a real S3-compatible server process."""

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import tokenize_hsmm

from maxtoki import storage
from maxtoki.cli import main as cli_main
from maxtoki.training import train_from_recipe

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "s3://maxtoki-test/e2e"

pytestmark = pytest.mark.s3


def cli(*argv):
    assert cli_main([str(a) for a in argv]) == 0


def run(recipe, name, batches, *overrides):
    return train_from_recipe(str(ROOT / "configs" / recipe), [
        f"variables.run_name={name}", f"save_folder={BUCKET}/runs/{name}", f"max_duration={batches}ba",
        f"eval_interval={batches}ba", "save_interval=2ba", "loggers={inmemory: {}}", "global_train_batch_size=8",
        "device_train_microbatch_size=8", "eval_subset_num_batches=1", "console_log_interval=100ba", *overrides])


def names(prefix):
    return sorted(k.rsplit("/", 1)[-1] for k in storage.list_keys(prefix))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Composer keeps local copies of remote checkpoints under ./s3:/...


@pytest.fixture(scope="module")
def s3_data(s3_server, hsmm_path, hsmm_compact):
    vocab, medians = hsmm_compact
    tokenize_hsmm(hsmm_path, vocab, medians, f"{BUCKET}/cells", 64)
    cli("data", "paragraphs", f"{BUCKET}/cells", "--out", f"{BUCKET}/paragraphs", "--num-examples", 64,
        "--max-seq-len", 256)
    cli("data", "paragraphs", f"{BUCKET}/cells", "--out", f"{BUCKET}/eval", "--num-examples", 12, "--eval",
        "--max-seq-len", 256, "--seed", 1)
    return str(vocab)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The module's runs start here: Composer keeps local copies of remote checkpoints under ./s3:/..."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("s3_training"))
        yield


def stage1(s3_data, batches, *overrides):
    return run("pretrain/tiny-cpu.yaml", "pretrain", batches, f"variables.data={BUCKET}/cells", "max_seq_len=64",
               f"variables.vocab={s3_data}", *overrides)


@pytest.fixture(scope="module")
def pretrained(s3_data, workdir):
    """Stage 1 for 4 batches, checkpointed to S3: the trainer and the run's objects on S3 after it."""
    return stage1(s3_data, 4), names(f"{BUCKET}/runs/pretrain")


@pytest.fixture(scope="module")
def resumed(s3_data, pretrained):
    """The same command with a longer duration (it resumes from the checkpoint on S3), and with the GPU
    recipes' callback that keeps only the newest checkpoints there: the trainer and the run's objects after it."""
    return stage1(s3_data, 6, "callbacks.prune_remote_checkpoints.keep=2"), names(f"{BUCKET}/runs/pretrain")


@pytest.fixture(scope="module")
def temporal(resumed):
    """Stage 2 from the latest stage-1 checkpoint on S3 (through Composer's symlink object), with the
    vocabulary that the data carries on S3."""
    return run("temporal/tiny-cpu.yaml", "temporal", 2, f"variables.data={BUCKET}/paragraphs",
               f"variables.eval_data={BUCKET}/paragraphs", f"variables.vocab={BUCKET}/paragraphs/vocab.json",
               f"variables.pretrained={BUCKET}/runs/pretrain/latest-rank0.pt.symlink", "max_seq_len=256",
               "model.rope_scaling.original_max_position_embeddings=64")


def test_both_stages_stream_from_s3_checkpoint_to_s3_and_resume(pretrained, resumed, temporal):
    """What the module's runs did (fixtures: the other tests read their checkpoints)."""
    from composer.loggers import InMemoryLogger

    from composer.callbacks import CheckpointSaver

    from maxtoki.remote_checkpoints import LINK_POLL_SECONDS

    first, written = pretrained
    assert int(first.state.timestamp.batch) == 4
    # the link is looked for every second, not Composer's 30 s: a run ends soon after its last upload
    saver = next(c for c in first.state.callbacks if isinstance(c, CheckpointSaver))
    assert saver._symlink_upload_wait_before_next_try_in_seconds == LINK_POLL_SECONDS
    # and its upload workers fork from a server that imported Composer once (Composer spawns each afresh)
    assert saver.remote_uploader.upload_executor._mp_context.get_start_method() == "forkserver"
    assert written == ["ep0-ba2-rank0.pt", "ep0-ba4-rank0.pt", "latest-rank0.pt.symlink"]
    # resumed from the checkpoint on S3, not from scratch; Composer never deletes checkpoints, the callback does
    again, kept = resumed
    logger = next(d for d in again.logger.destinations if isinstance(d, InMemoryLogger))
    assert [int(t.batch) for t, _ in logger.data["loss/train/total"]] == [4, 5]
    assert kept == ["ep0-ba4-rank0.pt", "ep0-ba6-rank0.pt", "latest-rank0.pt.symlink"]
    assert int(temporal.state.timestamp.batch) == 2
    assert "latest-rank0.pt.symlink" in names(f"{BUCKET}/runs/temporal")


def test_upload_workers_forked_from_one_server_see_the_environment_of_their_run(monkeypatch):
    """The forking server keeps the environment it started with; each pool's workers take their run's."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    from maxtoki.remote_checkpoints import forked_workers

    for endpoint in ("http://127.0.0.1:1", "http://127.0.0.1:2"):
        monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
        pool = forked_workers(ProcessPoolExecutor(max_workers=1))
        assert pool.submit(os.getenv, "S3_ENDPOINT_URL").result(timeout=120) == endpoint
        pool.shutdown()


def test_inference_reads_checkpoints_and_data_from_s3(s3_data, temporal, tmp_path):
    checkpoint = f"{BUCKET}/runs/temporal/latest-rank0.pt"  # resolved through the .symlink object
    cli("predict", "time", "--checkpoint", checkpoint, "--data", f"{BUCKET}/eval", "--out", tmp_path / "pred",
        "--train-data", f"{BUCKET}/paragraphs")
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(table) == json.loads((tmp_path / "pred" / "metrics.json").read_text())["examples"] > 0
    cli("generate", "--checkpoint", checkpoint, "--data", f"{BUCKET}/eval", "--out", tmp_path / "gen",
        "--max-new-tokens", 8)
    assert ad.read_h5ad(tmp_path / "gen" / "generated_cells.h5ad").n_obs > 0
    cli("embed", "--checkpoint", checkpoint, "--data", f"{BUCKET}/cells", "--out", tmp_path / "cells.h5ad")
    embedded = ad.read_h5ad(tmp_path / "cells.h5ad")
    assert embedded.obsm["X_maxtoki"].shape == (271, 64) and np.isfinite(embedded.obsm["X_maxtoki"]).all()
    assert cli_main(["predict", "time", "--checkpoint", f"{BUCKET}/runs/none/latest-rank0.pt", "--data",
                     f"{BUCKET}/eval", "--out", str(tmp_path / "x")]) == 2


def test_every_loader_and_every_run_gets_its_own_streaming_cache(monkeypatch, tmp_path):
    from maxtoki.data.loaders import streaming_cache

    manifest = {"kind": "maxtoki.cells", "created": "2026-01-01T00:00:00+00:00"}
    train = streaming_cache(f"{BUCKET}/cells", manifest, "s3://b/runs/a train_loader 0")
    assert train == streaming_cache(f"{BUCKET}/cells", dict(manifest), "s3://b/runs/a train_loader 0")  # all ranks
    others = {streaming_cache(f"{BUCKET}/cells", manifest, "s3://b/runs/a eval_loader 1"),  # eval of the same data
              streaming_cache(f"{BUCKET}/cells", manifest, "s3://b/runs/b train_loader 0"),  # another run
              streaming_cache(f"{BUCKET}/cells", {**manifest, "created": "2026-01-02T00:00:00+00:00"},
                              "s3://b/runs/a train_loader 0")}  # the data rewritten in place
    assert train not in others and len(others) == 3
    monkeypatch.setenv("MAXTOKI_CACHE", str(tmp_path / "disk"))
    assert streaming_cache(f"{BUCKET}/cells", manifest, "x").startswith(str(tmp_path / "disk") + "/")


def test_damaged_checkpoints_on_s3_are_refused_never_loaded(s3_data, pretrained, capsys):
    """A stage-2 ``load_path`` and an autoresume checkpoint on S3 are checked like local ones."""
    from maxtoki.training import main as train_main

    raw = storage.download_bytes(f"{BUCKET}/runs/pretrain/ep0-ba4-rank0.pt")
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF  # one byte changed inside the weights
    damaged = {"truncated": raw[: len(raw) // 2], "flipped": bytes(flipped)}
    key_prefix = storage.split_s3_uri(BUCKET)[1]  # Composer's link holds the checkpoint's key in the bucket
    for kind, payload in damaged.items():
        storage.upload_bytes(f"{BUCKET}/bad/{kind}.pt", payload)
        assert train_main([str(ROOT / "configs/temporal/tiny-cpu.yaml"), f"variables.data={BUCKET}/paragraphs",
                           f"variables.vocab={s3_data}", f"variables.pretrained={BUCKET}/bad/{kind}.pt",
                           f"save_folder={BUCKET}/runs/from-{kind}"]) == 2
        error = capsys.readouterr().err
        assert f"load_path {BUCKET}/bad/{kind}.pt" in error and "damaged" in error and error.count("\n") == 1
        # a save folder whose latest checkpoint is damaged: autoresume refuses it rather than loading it
        folder = f"{BUCKET}/runs/resume-{kind}"
        storage.upload_bytes(f"{folder}/ep0-ba4-rank0.pt", payload)
        storage.upload_bytes(f"{folder}/latest-rank0.pt.symlink",
                             f"{key_prefix}/runs/resume-{kind}/ep0-ba4-rank0.pt".encode())
        assert train_main([str(ROOT / "configs/pretrain/tiny-cpu.yaml"), f"variables.data={BUCKET}/cells",
                           f"variables.vocab={s3_data}", "max_seq_len=64", f"save_folder={folder}"]) == 2
        error = capsys.readouterr().err
        assert "autoresume checkpoint" in error and "damaged" in error and f"{folder}/latest-rank0.pt.symlink" in error
    # the link names a checkpoint that never arrived: refused, not a silent fresh start
    storage.upload_bytes(f"{BUCKET}/runs/lost/latest-rank0.pt.symlink",
                         f"{key_prefix}/runs/lost/ep0-ba4-rank0.pt".encode())
    assert train_main([str(ROOT / "configs/pretrain/tiny-cpu.yaml"), f"variables.data={BUCKET}/cells",
                       f"variables.vocab={s3_data}", "max_seq_len=64", f"save_folder={BUCKET}/runs/lost"]) == 2
    assert "which is not on the object store" in capsys.readouterr().err

