"""Learning, not just running: on simulated trajectories with held-out donors, a CPU-sized stage-2 run
predicts timelapses far better than the training-mean Δ and next cells better than gene frequencies."""

from pathlib import Path

import pytest
from helpers.held_out_baselines import held_out_baselines

from maxtoki.cli import main as cli_main
from maxtoki.training import train_from_recipe
from maxtoki.vocab import Vocabulary

ROOT = Path(__file__).resolve().parent.parent


def cli(*argv):
    assert cli_main([str(a) for a in argv]) == 0


@pytest.mark.slow
# Thresholds near benchmarks/README.md ("Learning"), so that a model three times worse fails: pairs reach a median
# error of 0.21 x the baseline's and 0.26 nats under the unigram cross-entropy; 3-4 cells 0.37 x and 0.40 nats.
@pytest.mark.parametrize("timepoints, max_seq_len, batches, error_share, nats_gained", [
    (2, 256, 600, 0.4, 0.1),  # pairs of cells
    (4, 320, 800, 0.5, 0.15),  # the paper's prompt shape: 3-4 cells, the last the query
], ids=["pairs", "3-4 cells"])
def test_stage2_learns_time_and_next_cells_on_held_out_donors(tmp_path, capsys, timepoints, max_seq_len, batches,
                                                              error_share, nats_gained):
    cli("data", "simulate", "--out", tmp_path / "sim.h5ad", "--donors", 40, "--ages-per-donor", 6,
        "--cells-per-sample", 20, "--genes", 400, "--seed", 1)
    cli("data", "medians", tmp_path / "sim.h5ad", "--out", tmp_path / "m.json")
    cli("data", "vocab", "--medians", tmp_path / "m.json", "--out", tmp_path / "v.json", "--max-time", 100)
    cli("data", "tokenize", tmp_path / "sim.h5ad", "--vocab", tmp_path / "v.json", "--medians", tmp_path / "m.json",
        "--out", tmp_path / "cells", "--time-column", "age", "--group-columns", "donor", "--model-input-size", 64)
    # times in years (ages are in months); whole donors held out for validation
    cli("data", "paragraphs", tmp_path / "cells", "--out", tmp_path / "p", "--num-examples", 8000, "--seed", 1,
        "--split", "train=0.8,val=0.2", "--time-scale", 1 / 12, "--min-timepoints", min(timepoints, 3),
        "--max-timepoints", timepoints, "--max-seq-len", max_seq_len)
    trainer = train_from_recipe(str(ROOT / "configs/temporal/tiny-cpu.yaml"), [
        f"variables.data={tmp_path / 'p/train'}", f"variables.eval_data={tmp_path / 'p/val'}",
        f"variables.vocab={tmp_path / 'v.json'}", "load_path=null", f"max_seq_len={max_seq_len}",
        "model.rope_scaling=null",
        "model.label_scalar=20", "model.additive_penalty=1",
        "model.config_overrides={hidden_size: 128, intermediate_size: 256, num_hidden_layers: 4}",
        f"max_duration={batches}ba", f"eval_interval={batches}ba", "eval_subset_num_batches=-1",
        "global_train_batch_size=16", "device_train_microbatch_size=16", "optimizer.lr=0.001",
        "scheduler.t_warmup=20ba",
        f"save_folder={tmp_path / 'run'}", f"save_interval={batches}ba", "console_log_interval=1000ba"])
    metrics = {k: float(v) for k, v in trainer.state.eval_metric_values.items()}
    median_baseline, unigram = held_out_baselines(str(tmp_path / "p/train"), str(tmp_path / "p/val"),
                                         Vocabulary.load(tmp_path / "v.json"))
    with capsys.disabled():
        print(f"\nheld-out donors: TimeBetweenCells median |error| {metrics['TimelapseMedianAE']:.2f} years "
              f"(training-mean baseline {median_baseline:.2f}), Pearson {metrics['TimelapsePearson']:.3f}; "
              f"NextCell cross-entropy {metrics['NextGeneCrossEntropy']:.3f} (unigram baseline {unigram:.3f})")
    assert metrics["TimelapseMedianAE"] <= error_share * median_baseline
    assert metrics["NextGeneCrossEntropy"] <= unigram - nats_gained
