"""A tiny model trained in seconds on simulated control donors, for checking that the age-acceleration
analysis finds a planted shift and finds none where none was planted (tests/test_analysis.py;
benchmarks/age_acceleration_seeds.py records it over seeds).

Two simulations share a seed, so they hold the same donors and cells; only the disease donors differ:
``shifted`` reads ``SHIFT`` months older, ``null`` not at all. The model trains on control donors of
``shifted`` only (the disease donors are held out, and so are the control donors of the ``val``
split, which the analysis queries), so it serves both.
"""

from __future__ import annotations

import json
from pathlib import Path

from maxtoki.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
SHIFT = 60  # months: the disease donors' expression looks five years older
YEARS = str(1 / 12)  # time tokens are years, ages are months
BATCHES = 600
DONORS, DISEASE_DONORS, CELLS_PER_SAMPLE = 60, 15, 6
PAIRS = 800


def cli(*argv) -> None:
    assert cli_main([str(a) for a in argv]) == 0


def train_on_simulated_donors(root: Path, seed: int) -> Path:
    """Simulate, tokenize, make paragraphs and train; returns ``root`` (cells in shifted-cells/ and null-cells/,
    training paragraphs in p/train, the model in run/latest-rank0.pt, its evaluation on the held-out control
    donors' paragraphs p/val in eval_metrics.json)."""
    import torch

    from maxtoki.training import train_from_recipe

    for name, shift in (("shifted", SHIFT), ("null", 0)):
        cli("data", "simulate", "--out", root / f"{name}.h5ad", "--donors", DONORS, "--disease-donors",
            DISEASE_DONORS, "--age-acceleration", shift, "--ages-per-donor", 4, "--cells-per-sample",
            CELLS_PER_SAMPLE, "--genes", 200, "--seed", seed)
    cli("data", "medians", root / "shifted.h5ad", "--out", root / "m.json")
    cli("data", "vocab", "--medians", root / "m.json", "--out", root / "v.json", "--max-time", 100)
    for name in ("shifted", "null"):
        cli("data", "tokenize", root / f"{name}.h5ad", "--vocab", root / "v.json", "--medians", root / "m.json",
            "--out", root / f"{name}-cells", "--time-column", "age", "--group-columns", "donor", "--keep-obs",
            "condition", "cell_type", "donor", "--model-input-size", 32)
    cli("data", "paragraphs", root / "shifted-cells", "--out", root / "p", "--num-examples", 4000, "--seed", seed,
        "--split", "train=0.6,val=0.4", "--holdout-values", "condition=disease", "--time-scale", YEARS,
        "--min-timepoints", 2, "--max-timepoints", 3, "--max-seq-len", 128)
    # a model this small trains as fast on one thread, and two threads stall when the other core is busy
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = train_from_recipe(str(ROOT / "configs/temporal/tiny-cpu.yaml"), [
            f"variables.data={root / 'p/train'}", f"variables.eval_data={root / 'p/val'}",
            f"variables.vocab={root / 'v.json'}", "load_path=null", "max_seq_len=128", "model.rope_scaling=null",
            "model.label_scalar=20", "model.additive_penalty=1",
            "model.config_overrides={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2}",
            f"max_duration={BATCHES}ba", f"eval_interval={BATCHES}ba", "global_train_batch_size=16",
            "device_train_microbatch_size=16", "optimizer.lr=0.002", "scheduler.t_warmup=20ba",
            f"save_folder={root / 'run'}", f"save_interval={BATCHES}ba", "console_log_interval=1000ba",
            f"seed={seed}"])
    finally:
        torch.set_num_threads(threads)
    metrics = {name: float(value) for name, value in trainer.state.eval_metric_values.items()}
    (root / "eval_metrics.json").write_text(json.dumps(metrics))
    return root


def age_acceleration(root: Path, cells: str, *extra) -> dict:
    """The analysis of ``cells`` (shifted or null) with the trained model; returns acceleration.json."""
    out = root / f"acceleration-{cells}"
    cli("analyze", "age-acceleration", "--checkpoint", root / "run/latest-rank0.pt", "--data", root / f"{cells}-cells",
        "--donor-column", "donor", "--match-columns", "cell_type", "--time-scale", YEARS, "--condition-column",
        "condition", "--case", "disease", "--control", "control", "--age-tolerance", 60, "--pairs", PAIRS, "--out",
        out, *extra)
    return json.loads((out / "acceleration.json").read_text())
