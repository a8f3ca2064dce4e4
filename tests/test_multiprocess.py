"""Two processes on CPU through Composer's launcher (gloo): ranks read different samples, the global
batch is the recipe's, both stages train, and a two-process checkpoint resumes in one process with
the right sample count."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tokenize_hsmm

from maxtoki.cli import main as cli_main
from maxtoki.training import train_from_recipe

ROOT = Path(__file__).resolve().parent.parent
COMPOSER = str(Path(sys.executable).parent / "composer")


def cli(*argv):
    assert cli_main([str(a) for a in argv]) == 0


def launch(*argv):
    """Run a script in two ranks through Composer's launcher. The launcher picks a free port for the
    ranks to meet on and rank 0 binds it later; another process may take it meanwhile (EADDRINUSE), and then
    the launch is tried again."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    for _ in range(3):
        result = subprocess.run([COMPOSER, "-n", "2", *map(str, argv)], capture_output=True, text=True, env=env,
                                cwd=ROOT)
        if result.returncode == 0 or "EADDRINUSE" not in result.stdout + result.stderr:
            break
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def timestamp(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["timestamp"]["Timestamp"]


def training(vocab, recipe, save_folder, batches, *extra):
    """A recipe and its keys for a short run that checkpoints every 2 batches."""
    return [ROOT / "configs" / recipe, f"variables.vocab={vocab}", f"save_folder={save_folder}", f"max_duration={batches}ba", f"eval_interval={batches}ba",
            "save_interval=2ba", "global_train_batch_size=8", "device_train_microbatch_size=4",
            "device_eval_batch_size=4", "eval_subset_num_batches=1", "console_log_interval=100ba", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory, hsmm_path, hsmm_compact):
    vocab, medians = hsmm_compact
    root = tmp_path_factory.mktemp("multiprocess")
    tokenize_hsmm(hsmm_path, vocab, medians, root / "cells", 64)
    cli("data", "paragraphs", root / "cells", "--out", root / "paragraphs", "--num-examples", 96, "--max-seq-len", 256)
    return root, str(vocab)


@pytest.fixture(scope="module")
def launched(data, tmp_path_factory):
    """One launch of two ranks: their first loader batches, then stage 1 for 4 batches and stage 2 from its
    checkpoint; returns the directory of their outputs."""
    root, vocab = data
    out = tmp_path_factory.mktemp("launched")
    stage1 = training(vocab, "pretrain/tiny-cpu.yaml", out / "p", 4, f"variables.data={root / 'cells'}",
                      "max_seq_len=64")
    stage2 = training(vocab, "temporal/tiny-cpu.yaml", out / "t", 2, f"variables.data={root / 'paragraphs'}",
                      f"variables.pretrained={out / 'p' / 'ep0-ba4-rank0.pt'}", "max_seq_len=256",
                      "model.rope_scaling.original_max_position_embeddings=64")
    launch(ROOT / "tests/helpers/two_ranks.py", root / "cells", vocab, out, 3, "--train", *stage1, "--train", *stage2)
    return out


def test_ranks_read_different_samples(launched):
    first, second = (json.loads((launched / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(first) == len(second) == 12  # 3 batches of 4 per rank: a global batch of 8
    assert not set(first) & set(second)


def test_both_stages_with_two_processes_and_resume_with_one(data, launched, tmp_path):
    root, vocab = data
    assert not (launched / "p" / "ep0-ba4-rank1.pt").exists()  # DDP: one full checkpoint, written by rank 0
    written = timestamp(launched / "p" / "ep0-ba4-rank0.pt")
    assert (int(written["batch"]), int(written["sample"])) == (4, 32)  # 4 global batches of 8
    # stage 2 with two processes from the stage-1 checkpoint
    written = timestamp(launched / "t" / "ep0-ba2-rank0.pt")
    assert (int(written["batch"]), int(written["sample"])) == (2, 16)
    # the stage-1 run, resumed by one process (this one), continues the count where two processes left it
    shutil.copytree(launched / "p", tmp_path / "p", symlinks=True)
    recipe, *overrides = training(vocab, "pretrain/tiny-cpu.yaml", tmp_path / "p", 6,
                                  f"variables.data={root / 'cells'}", "max_seq_len=64")
    train_from_recipe(str(recipe), [str(o) for o in overrides])
    resumed = timestamp(tmp_path / "p" / "ep0-ba6-rank0.pt")
    assert (int(resumed["batch"]), int(resumed["sample"])) == (6, 48)
