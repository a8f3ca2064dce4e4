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


def run(recipe, tmp_path, name, batches, *overrides):
    return train_from_recipe(str(ROOT / "configs" / recipe), [
        f"variables.run_name={name}", f"save_folder={BUCKET}/runs/{name}", f"max_duration={batches}ba",
        f"eval_interval={batches}ba", "save_interval=2ba", "loggers={inmemory: {}}", "global_train_batch_size=8",
        "device_train_microbatch_size=8", "eval_subset_num_batches=1", "console_log_interval=100ba",
        f"train_loader.dataset.local={tmp_path / name / 'train-cache'}",
        f"eval_loader.dataset.local={tmp_path / name / 'eval-cache'}", *overrides])


def names(prefix):
    return sorted(k.rsplit("/", 1)[-1] for k in storage.list_keys(prefix))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Composer keeps local copies of remote checkpoints under ./s3:/...


@pytest.fixture(scope="module")
def s3_data(s3_server, hsmm_path, hsmm_reference):
    vocab, medians = hsmm_reference
    tokenize_hsmm(hsmm_path, vocab, medians, f"{BUCKET}/cells", 64)
    cli("data", "paragraphs", f"{BUCKET}/cells", "--out", f"{BUCKET}/paragraphs", "--num-examples", 64,
        "--max-seq-len", 256)
    cli("data", "paragraphs", f"{BUCKET}/cells", "--out", f"{BUCKET}/eval", "--num-examples", 12, "--eval",
        "--max-seq-len", 256, "--seed", 1)
    return str(vocab)


def test_both_stages_stream_from_s3_checkpoint_to_s3_and_resume(s3_data, tmp_path):
    from composer.loggers import InMemoryLogger

    common = [f"variables.vocab={s3_data}"]
    first = run("pretrain/tiny-cpu.yaml", tmp_path, "pretrain", 4, f"variables.data={BUCKET}/cells", "max_seq_len=64",
                *common)
    assert int(first.state.timestamp.batch) == 4
    assert names(f"{BUCKET}/runs/pretrain") == ["ep0-ba2-rank0.pt", "ep0-ba4-rank0.pt", "latest-rank0.pt.symlink"]
    # the same command with a longer duration resumes from the checkpoint on S3, not from scratch
    again = run("pretrain/tiny-cpu.yaml", tmp_path / "again", "pretrain", 6, f"variables.data={BUCKET}/cells",
                "max_seq_len=64", *common)
    logger = next(d for d in again.logger.destinations if isinstance(d, InMemoryLogger))
    assert [int(t.batch) for t, _ in logger.data["loss/train/total"]] == [4, 5]
    assert "ep0-ba6-rank0.pt" in names(f"{BUCKET}/runs/pretrain")
    # stage 2 starts from the latest stage-1 checkpoint on S3 (through Composer's symlink object)
    # and reads the vocabulary that the data carries on S3
    second = run("temporal/tiny-cpu.yaml", tmp_path, "temporal", 2, f"variables.data={BUCKET}/paragraphs",
                 f"variables.eval_data={BUCKET}/paragraphs", f"variables.vocab={BUCKET}/paragraphs/vocab.json",
                 f"variables.pretrained={BUCKET}/runs/pretrain/latest-rank0.pt.symlink", "max_seq_len=256",
                 "model.rope_scaling.original_max_position_embeddings=64")
    assert int(second.state.timestamp.batch) == 2
    assert "latest-rank0.pt.symlink" in names(f"{BUCKET}/runs/temporal")


def test_inference_reads_checkpoints_and_data_from_s3(s3_data, tmp_path):
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
