"""The in-silico perturbation screen against planted truth: does |mean shift| rank the simulation's age
drivers above other genes, for deletion and for overexpression, and how fast is the shared-context screen?

    ../.venv/bin/python perturb_screen.py model --seed 0      # simulate, tokenize, train 300 batches; again: 600
    ../.venv/bin/python perturb_screen.py screen --seed 0 --screen-seed 0 --query-cells 100 --contexts-per-cell 1
    ../.venv/bin/python perturb_screen.py throughput --seed 0 --query-cells 10
    ../.venv/bin/python perturb_screen.py coverage --seed 0   # drivers in cells tokenized longer (no training)
    ../.venv/bin/python perturb_screen.py report              # the tables of benchmarks/README.md

The model follows the recipe of tests/test_analysis_validation.py with 36 simulated donors (8 with the disease
and held out; 400 genes, 20 planted drivers; the tiny model widened to 4 x 128, 600 batches), the simulation,
the paragraphs and the training seeded by --seed. A screen deletes and
overexpresses the model's panel: its 20 drivers and 100 genes drawn at random among all others, in
--query-cells control cells (drawn with --screen-seed). The drivers are scored against the panel's genes in no
age program and against all its random genes (a random gene beats a driver with probability 1 - AUROC).
Results go to WORK/results/*.json and WORK/screens/; `report` scores them all again from shifts.csv.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
YEARS = 1 / 12  # time tokens are years, ages are months
RANK_BINS = (0, 5, 15, 30, 62, 126)
BATCHES = 600
RANDOM_GENES = 100


def run(*argv) -> None:
    from maxtoki.cli import main as cli

    if cli([str(a) for a in argv]) != 0:
        sys.exit(f"failed: maxtoki {' '.join(map(str, argv))}")


def model_dir(work: Path, seed: int, cell_length: int) -> Path:
    return work / f"cells{cell_length}-seed{seed}"


def build_model(work: Path, seed: int, cell_length: int, chunk: int) -> Path | None:
    """Simulated donors -> cells of ``cell_length`` tokens -> paragraphs of 2-3 cells -> a trained tiny model.
    Trains at most ``chunk`` batches per call (resuming the same schedule), so one call stays a few minutes;
    returns the checkpoint once all batches are trained, else None."""
    from maxtoki.training import train_from_recipe

    root = model_dir(work, seed, cell_length)
    checkpoint, done = root / "run/latest-rank0.pt", root / "training_seconds.txt"
    if done.exists():
        return checkpoint
    root.mkdir(parents=True, exist_ok=True)
    seq_len = 256 * cell_length // 64
    if not (root / "p/train").exists():
        run("data", "simulate", "--out", root / "sim.h5ad", "--donors", 36, "--disease-donors", 8,
            "--age-acceleration", 60, "--ages-per-donor", 6, "--cells-per-sample", 20, "--genes", 400,
            "--seed", 3 + seed)
        run("data", "medians", root / "sim.h5ad", "--out", root / "m.json")
        run("data", "vocab", "--medians", root / "m.json", "--out", root / "v.json", "--max-time", 100)
        run("data", "tokenize", root / "sim.h5ad", "--vocab", root / "v.json", "--medians", root / "m.json", "--out",
            root / "cells", "--time-column", "age", "--group-columns", "donor", "--keep-obs", "condition",
            "cell_type", "donor", "--model-input-size", cell_length)
        run("data", "paragraphs", root / "cells", "--out", root / "p", "--num-examples", 8000, "--seed", 1 + seed,
            "--split", "train=0.85,val=0.15", "--holdout-values", "condition=disease", "--time-scale", YEARS,
            "--min-timepoints", 2, "--max-timepoints", 3, "--max-seq-len", seq_len)
    progress = root / "progress.json"
    state = json.loads(progress.read_text()) if progress.exists() else {"batches": 0, "seconds": 0.0}
    target = min(state["batches"] + chunk, BATCHES)
    started = time.perf_counter()
    train_from_recipe(str(ROOT / "configs/temporal/tiny-cpu.yaml"), [
        f"variables.data={root / 'p/train'}", f"variables.eval_data={root / 'p/val'}",
        f"variables.vocab={root / 'v.json'}", "load_path=null", f"max_seq_len={seq_len}", "model.rope_scaling=null",
        "model.label_scalar=20", "model.additive_penalty=1", "model.time_smoothing=0", f"seed={17 + seed}",
        "model.config_overrides={hidden_size: 128, intermediate_size: 256, num_hidden_layers: 4}",
        f"max_duration={target}ba", f"scheduler.t_max={BATCHES}ba", f"eval_interval={BATCHES}ba",
        "global_train_batch_size=16", "device_train_microbatch_size=16", "optimizer.lr=0.001",
        "scheduler.t_warmup=20ba", f"save_folder={root / 'run'}", f"save_interval={chunk}ba",
        "console_log_interval=1000ba", "loggers={}"])
    state = {"batches": target, "seconds": state["seconds"] + time.perf_counter() - started}
    progress.write_text(json.dumps(state) + "\n")
    if target < BATCHES:
        print(f"trained {target} of {BATCHES} batches; run the same command again to go on")
        return None
    done.write_text(f"{state['seconds']:.1f}\n")
    return checkpoint


def load(work: Path, seed: int, cell_length: int):
    """The trained model, the cells, and the planted truth."""
    from maxtoki.analysis.cells import load_cells
    from maxtoki.inference import load_model

    root = model_dir(work, seed, cell_length)
    cells = load_cells(str(root / "cells"), ["donor", "condition", "cell_type"], time_column="age")
    model, _ = load_model(str(root / "run/latest-rank0.pt"), cells.vocab)
    return model, cells, planted(work, seed, cell_length)


def planted(work: Path, seed: int, cell_length: int) -> dict:
    """The drivers, the genes in no age program, and the screened panel: the drivers and RANDOM_GENES genes
    drawn at random among all the others (the same for every screen of one model)."""
    import anndata as ad

    var = ad.read_h5ad(model_dir(work, seed, cell_length) / "sim.h5ad", backed="r").var
    drivers = list(var.index[var["age_driver"]])
    others = var.index[~var["age_driver"]]
    drawn = list(np.random.default_rng(1000 + seed).choice(others, RANDOM_GENES, replace=False))
    return {"drivers": set(drivers), "no_program": set(var.index[var["age_effect"] == 0]),
            "random": set(drawn), "panel": drivers + drawn}


def screen(args) -> dict:
    from maxtoki.analysis.perturb import PerturbOptions, perturb
    from maxtoki.analysis.prompts import ContextOptions

    model, cells, truth = load(args.work, args.seed, args.cell_length)
    name = (f"cells{args.cell_length}-seed{args.seed}-screen{args.screen_seed}-q{args.query_cells}"
            f"-c{args.contexts_per_cell}")
    out = args.work / "screens" / name
    control = (("condition", "control"),)
    options = PerturbOptions(genes=tuple(truth["panel"]), query_cells=args.query_cells, query_where=control,
                             context_where=control, seed=args.screen_seed, contexts_per_cell=args.contexts_per_cell)
    started = time.perf_counter()
    perturb(model, cells, out, ContextOptions("donor", ("cell_type",), 2, YEARS), options, batch_size=64)
    seconds = time.perf_counter() - started
    import pandas as pd

    shifts = pd.read_csv(out / "shifts.csv")
    result = {"name": name, "seed": args.seed, "screen_seed": args.screen_seed, "cell_length": args.cell_length,
              "query_cells": args.query_cells, "contexts_per_cell": args.contexts_per_cell,
              "seconds": round(seconds, 1), "variants": len(shifts), "modes": score(shifts, truth),
              "deletion": deletion_by_rank(shifts[shifts["mode"] == "delete"], cells, truth["drivers"],
                                           args.query_cells)}
    path = args.work / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["modes"], indent=2))
    return result


def score(shifts, truth: dict) -> dict:
    """AUROCs of |mean shift| and of |mean specific shift| (effects.csv) over the panel: the drivers against
    the panel's genes in no age program, and against all its randomly drawn genes."""
    from sklearn.metrics import roc_auc_score

    from maxtoki.analysis.perturb import summarize

    shifts = shifts[shifts["gene"].isin(truth["panel"])]
    effects = summarize(shifts, shifts["cell_id"].nunique())
    result = {}
    for mode, rows in effects.groupby("mode"):
        rows = rows.set_index("gene")
        is_driver = rows.index.isin(list(truth["drivers"]))
        result[mode] = {"drivers_scored": int(is_driver.sum()), "random_scored": int((~is_driver).sum())}
        for against in ("no_program", "random"):
            keep = is_driver | rows.index.isin(list(truth[against]))
            for column, key in (("mean_shift", "auroc"), ("mean_specific_shift", "specific_auroc")):
                result[mode][f"{key}_vs_{against}"] = float(roc_auc_score(is_driver[keep], rows[column].abs()[keep]))
    return result


def deletion_by_rank(deleted, cells, drivers, query_cells) -> dict:
    """Why deletion says less: |shift| by the deleted gene's rank in the cell, and how many query cells
    express each driver (deletion can only act where the gene is in the cell's rank list)."""
    import pandas as pd

    positions = {cell_id: i for i, cell_id in enumerate(cells.obs.index)}
    vocab = cells.vocab
    ranks = []
    for cell_id, gene in zip(deleted["cell_id"], deleted["gene"]):
        ids = np.asarray(cells.input_ids[positions[cell_id]])
        ranks.append(int(np.flatnonzero(ids == vocab[gene])[0]))  # 1 = top gene (after <bos>)
    table = deleted.assign(rank=ranks, driver=deleted["gene"].isin(list(drivers)),
                           size=deleted["shift"].abs())
    table["bin"] = pd.cut(table["rank"], RANK_BINS)
    by_rank = table.groupby(["bin", "driver"], observed=True)["size"].agg(["count", "mean"]).reset_index()
    fraction = table.groupby("gene")["cell_id"].nunique() / query_cells
    return {
        "abs_shift_by_rank": [{"ranks": str(r["bin"]), "driver": bool(r["driver"]), "cells": int(r["count"]),
                               "mean_abs_shift": float(r["mean"])} for _, r in by_rank.iterrows()],
        "driver_fraction_of_cells": sorted([round(float(fraction.get(g, 0.0)), 3) for g in drivers], reverse=True),
        "other_fraction_of_cells_median": float(fraction[~fraction.index.isin(list(drivers))].median()),
        "driver_median_rank": float(table.loc[table["driver"], "rank"].median()),
        "other_median_rank": float(table.loc[~table["driver"], "rank"].median()),
    }


def throughput(args) -> dict:
    """Variants per second: the shared-context screen (context once, variants over its cache) against scoring
    every variant as a whole prompt (``predict_time.predict``), the same model, cells and variants."""
    from maxtoki.analysis.perturbations import delete, overexpress
    from maxtoki.analysis.prompts import ContextOptions, ContextSampler
    from maxtoki.analysis.timelapse import SharedContextPredictor
    from maxtoki.inference.predict_time import predict

    model, cells, _ = load(args.work, args.seed, args.cell_length)
    vocab = cells.vocab
    genes = [vocab.token(i) for i in np.flatnonzero(vocab.is_gene)]  # every gene, as the first screens did
    control = cells.where((("condition", "control"),))
    sampler = ContextSampler(cells, control, ContextOptions("donor", ("cell_type",), 2, YEARS))
    rng = np.random.default_rng(0)
    limit = model.config.max_position_embeddings
    jobs = []
    for query in rng.choice(control, args.query_cells, replace=False):
        cell = np.asarray(cells.input_ids[query])
        variants = [cell] + [v for g in genes for v in (delete(cell, vocab[g]), overexpress(cell, vocab[g],
                                                                                            cells.max_length))
                             if v is not None]
        prefix, _ = sampler.prompt(sampler.sample(query, rng), max(variants, key=len), limit)
        jobs.append((prefix, variants))
    total = sum(len(v) for _, v in jobs)
    shared = SharedContextPredictor(model, vocab, batch_size=64)
    timings = {"shared_context": [], "whole_prompts": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        cached = [shared(prefix, variants) for prefix, variants in jobs]
        timings["shared_context"].append(time.perf_counter() - started)
        started = time.perf_counter()
        whole = [predict(model, [{"prompt_ids": np.concatenate([prefix, v, [vocab.eoq_id]])} for v in variants],
                         vocab, batch_size=64).expected for prefix, variants in jobs]
        timings["whole_prompts"].append(time.perf_counter() - started)
    difference = max(float(np.abs(a - b).max()) for a, b in zip(cached, whole))
    result = {"cell_length": args.cell_length, "query_cells": args.query_cells, "variants": total,
              "prompt_tokens": float(np.mean([len(p) for p, _ in jobs])),
              "variant_tokens": float(np.mean([len(v) for _, vs in jobs for v in vs])), "repeats": args.repeats,
              "largest_difference_time_tokens": difference}
    for name, seconds in timings.items():
        result[name] = {"seconds": [round(s, 2) for s in seconds], "variants_per_second": total / np.median(seconds)}
    path = args.work / "results" / f"throughput-cells{args.cell_length}-seed{args.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def coverage(args) -> dict:
    """Longer cells without training: the share of control cells whose rank list holds each driver (where a
    deletion can act) when the same simulated cells are tokenized to longer cells."""
    import anndata as ad

    from maxtoki.analysis.cells import load_cells

    root = model_dir(args.work, args.seed, args.cell_length)
    var = ad.read_h5ad(root / "sim.h5ad", backed="r").var
    drivers, null = var.index[var["age_driver"]], var.index[var["age_effect"] == 0]
    result = {"seed": args.seed}
    for length in (64, 128, 256):
        cells = load_cells(str(root / "sim.h5ad"), ["condition"], time_column="age", vocab=load_vocab(root),
                           medians=str(root / "m.json"), model_input_size=length)
        control = [np.asarray(cells.input_ids[i]) for i in cells.where((("condition", "control"),))]
        counts = np.bincount(np.concatenate(control).astype(np.int64), minlength=len(cells.vocab)) / len(control)
        share = {group: [float(counts[cells.vocab[g]]) for g in genes] for group, genes in
                 (("drivers", drivers), ("no_program", null))}
        result[f"cells{length}"] = {group: {"median": float(np.median(v)), "min": float(np.min(v)),
                                            "max": float(np.max(v))} for group, v in share.items()}
    path = args.work / "results" / f"coverage-seed{args.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def load_vocab(root: Path):
    from maxtoki.vocab import Vocabulary

    return Vocabulary.load(root / "v.json")


def report(args) -> None:
    """Markdown tables over all recorded screens, scored on each model's panel from shifts.csv (a screen of
    more genes scores exactly as a screen of the panel would: every variant is read on its own, and the
    specific shift is recomputed over the panel): median and range over the runs."""
    import pandas as pd

    results = [json.loads(p.read_text()) for p in sorted((args.work / "results").glob("cells*-seed*-screen*.json"))]
    truths, settings = {}, {}
    for r in results:
        key = (r["seed"], r["cell_length"])
        truths.setdefault(key, planted(args.work, *key))
        shifts = pd.read_csv(args.work / "screens" / r["name"] / "shifts.csv")
        r["modes"] = score(shifts, truths[key])
        null = shifts[shifts["gene"].isin(list(truths[key]["no_program"] & set(truths[key]["panel"])))]
        r["no_program"] = null.groupby(["mode", "gene"])["shift"].agg(["mean", "sem"])
        settings.setdefault((*key, r["query_cells"], r["contexts_per_cell"]), []).append(r)
    print("| model seed (cell tokens) | query cells | contexts per cell | screen seeds | mode | "
          "AUROC vs no-program | AUROC vs random genes | specific: vs no-program | specific: vs random genes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (seed, length, queries, contexts), runs in sorted(settings.items()):
        for mode in ("delete", "overexpress"):
            scores = [_spread([r["modes"][mode][key] for r in runs]) for key in (
                "auroc_vs_no_program", "auroc_vs_random", "specific_auroc_vs_no_program", "specific_auroc_vs_random")]
            seeds = ",".join(str(r["screen_seed"]) for r in runs)
            print(f"| {seed} ({length}) | {queries} | {contexts} | {seeds} | {mode} | {' | '.join(scores)} |")
    print("\nGenes in no age program, per screen and mode: mean of their mean shifts (months), and median "
          "|mean shift| / standard error (about 0.67 for pure noise)")
    for r in results:
        parts = [f"{mode} {rows['mean'].mean():+.2f}, {(rows['mean'].abs() / rows['sem']).median():.2f}"
                 for mode, rows in r["no_program"].groupby(level="mode")]
        print(f"   {r['name']}: {'; '.join(parts)}")
    for r in results:
        if r["contexts_per_cell"] == 1 and r["query_cells"] == 100:
            d = r["deletion"]
            print(f"{r['name']}: drivers in cells {d['driver_fraction_of_cells']} (others median "
                  f"{d['other_fraction_of_cells_median']}), median rank drivers {d['driver_median_rank']} others "
                  f"{d['other_median_rank']}")
            for row in d["abs_shift_by_rank"]:
                print(f"   ranks {row['ranks']:>9} driver={row['driver']!s:<5} cells {row['cells']:>5} "
                      f"mean |shift| {row['mean_abs_shift']:.2f}")
    for p in sorted((args.work / "results").glob("throughput-*.json")):
        t = json.loads(p.read_text())
        print(f"\n{p.name}: {t['variants']} variants, prompt {t['prompt_tokens']:.0f} + variant "
              f"{t['variant_tokens']:.0f} tokens; shared {t['shared_context']['variants_per_second']:.0f}/s "
              f"{t['shared_context']['seconds']}, whole {t['whole_prompts']['variants_per_second']:.0f}/s "
              f"{t['whole_prompts']['seconds']}, max difference {t['largest_difference_time_tokens']:.2e}")
    for p in sorted((args.work / "results").glob("coverage-*.json")):
        print(f"\n{p.name}: {p.read_text()}")


def _spread(values) -> str:
    return f"**{np.median(values):.2f}** ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("model", "screen", "throughput", "coverage", "report"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/maxtoki-perturb-screen"))
    parser.add_argument("--seed", type=int, default=0, help="simulation, paragraphs and training")
    parser.add_argument("--cell-length", type=int, default=64, help="tokens per cell (--model-input-size)")
    parser.add_argument("--screen-seed", type=int, default=0, help="query cells and contexts")
    parser.add_argument("--query-cells", type=int, default=100)
    parser.add_argument("--contexts-per-cell", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="throughput: timed runs (median)")
    parser.add_argument("--chunk-batches", type=int, default=300, help="model: batches to train per call")
    args = parser.parse_args()
    if args.step == "model":
        print(build_model(args.work, args.seed, args.cell_length, args.chunk_batches))
    elif args.step == "report":
        report(args)
    elif not (model_dir(args.work, args.seed, args.cell_length) / "training_seconds.txt").exists():
        sys.exit("train the model first: perturb_screen.py model with the same --seed and --cell-length")
    else:
        {"screen": screen, "throughput": throughput, "coverage": coverage}[args.step](args)


if __name__ == "__main__":
    main()
