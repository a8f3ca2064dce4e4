"""A goal-state screen where the truth is known: simulated donors with planted age drivers, a stage-1 model
trained on their cells (no times), and the embedding screen old -> young over the drivers and genes matched to
them on how many old cells hold them. Shared by tests/test_perturb_validation.py and
benchmarks/goal_state_screen.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
SIZE = dict(donors=16, ages=4, cells_per_sample=25, genes=400, cell_tokens=64, batches=300, query_cells=50)


def cli(*argv) -> None:
    from maxtoki.cli import main

    assert main(["--quiet", *map(str, argv)]) == 0


def simulate(root: Path, seed: int) -> None:
    """Donors aged 240-960 months (age_group young / middle / old) with 20 planted drivers, tokenized."""
    cli("data", "simulate", "--out", root / "sim.h5ad", "--donors", SIZE["donors"], "--ages-per-donor", SIZE["ages"],
        "--cells-per-sample", SIZE["cells_per_sample"], "--genes", SIZE["genes"], "--seed", seed)
    cli("data", "medians", root / "sim.h5ad", "--out", root / "m.json")
    cli("data", "vocab", "--medians", root / "m.json", "--out", root / "v.json", "--max-time", 100)
    cli("data", "tokenize", root / "sim.h5ad", "--vocab", root / "v.json", "--medians", root / "m.json",
        "--out", root / "cells", "--keep-obs", "donor", "age_group", "--model-input-size", SIZE["cell_tokens"])


def train_stage1(root: Path, batches: int = SIZE["batches"], seed: int = 17) -> Path:
    """configs/pretrain/tiny-cpu.yaml on the cells, as docs/training.md runs stage 1."""
    from maxtoki.training import train_from_recipe

    run = root / "run"
    train_from_recipe(str(ROOT / "configs/pretrain/tiny-cpu.yaml"), [
        f"variables.data={root / 'cells'}", f"variables.vocab={root / 'v.json'}",
        f"max_seq_len={SIZE['cell_tokens']}", f"max_duration={batches}ba", "eval_loader=null",
        f"save_folder={run}", f"save_interval={batches}ba", f"seed={seed}", "console_log_interval=1000ba"])
    return run / "latest-rank0.pt"


def panel(root: Path, cells, per_driver: int = 2) -> dict[str, list[str]]:
    """The drivers, and per driver the ``per_driver`` other genes and the ``per_driver`` genes in no age program
    nearest to it in coverage (old cells whose rank lists hold the gene): rank-matched controls."""
    import anndata as ad

    var = ad.read_h5ad(root / "sim.h5ad", backed="r").var
    vocab = cells.vocab
    old = cells.where((("age_group", "old"),))
    coverage = np.bincount(np.concatenate([cells.input_ids[i][1:-1] for i in old]).astype(int), minlength=len(vocab))
    drivers = [g for g in var.index[var["age_driver"]] if g in vocab]
    chosen: dict[str, list[str]] = {"drivers": drivers}
    for name, pool in (("others", var.index[~var["age_driver"] & (var["age_effect"] > 0)]),
                       ("no_program", var.index[var["age_effect"] == 0])):
        pool = [g for g in pool if g in vocab]
        covered = np.array([coverage[vocab[g]] for g in pool])
        picked: list[str] = []
        for driver in drivers:
            order = np.argsort(np.abs(covered - coverage[vocab[driver]]), kind="stable")
            picked += [pool[i] for i in order if pool[i] not in picked][:per_driver]
        chosen[name] = picked
    return chosen


def screen(model, cells, out: Path, genes: dict[str, list[str]], seed: int = 0) -> pd.DataFrame:
    """Delete and overexpress every panel gene in old cells; the goal-state shift towards young cells."""
    from maxtoki.analysis.perturb import PerturbOptions, perturb

    options = PerturbOptions(genes=tuple(g for names in genes.values() for g in names),
                             modes=("delete", "overexpress"), readout="embedding",
                             query_cells=SIZE["query_cells"], start_state=("age_group", "old"),
                             goal_state=("age_group", "young"), seed=seed)
    return perturb(model, cells, out, None, options, batch_size=64)


def aurocs(effects: pd.DataFrame, genes: dict[str, list[str]]) -> dict[str, float]:
    """AUROC of each gene's best goal-state shift beyond its rank-matched null, over both modes (which one
    moves an old cell towards young depends on whether the gene rises or falls with age): the drivers against
    the genes in no age program, and against the other genes of age programs."""
    from sklearn.metrics import roc_auc_score

    best = effects.groupby("gene")["shift_beyond_null"].max()
    result = {}
    for against in ("no_program", "others"):
        names = genes["drivers"] + genes[against]
        result[against] = float(roc_auc_score([g in genes["drivers"] for g in names], best[names]))
    return result


def untrained_model(vocab, seed: int = 0):
    """A randomly initialised tiny model over the same vocabulary: what the screen finds without training."""
    import torch
    from transformers import LlamaForCausalLM

    from maxtoki.model.sizes import llama_config

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config("tiny", len(vocab), SIZE["cell_tokens"], vocab.pad_id, vocab.bos_id,
                                         vocab.eos_id)).eval()
