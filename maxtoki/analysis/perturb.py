"""In-silico perturbation (the paper's driver screen): delete a gene from a query cell's rank list or
overexpress it (move it to the top), and measure how the predicted timelapse moves.

Each query cell gets ``contexts_per_cell`` contexts (as in ``prompts``), each from another donor; the
unperturbed cell and all of its perturbed variants are read after every context, which runs once
(``SharedContextPredictor``), and a variant's shift is averaged over the contexts. The effect of a
gene is the mean shift of the predicted time over the cells it changed, in time-column units;
genes are ranked by the size of that shift. With ``next_cell``, every variant is also continued with
NextCell (``variant <boq> Δ <eoq>`` -> the cell expected Δ later, greedy), and the change of the generated
cell is one minus the Jaccard overlap of its genes with the unperturbed cell's continuation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from maxtoki.analysis.cells import AnalysisCells
from maxtoki.analysis.prompts import ContextOptions, ContextSampler
from maxtoki.analysis.timelapse import SharedContextPredictor
from maxtoki.console import progress_bar
from maxtoki.errors import MaxtokiError
from maxtoki.inference.loading import untrained_time_warning

MODES = ("delete", "overexpress")


@dataclass(frozen=True)
class PerturbOptions:
    genes: tuple[str, ...] = ()  # token names (Ensembl IDs); empty: the top_genes most frequent in the queries
    top_genes: int = 100
    modes: tuple[str, ...] = MODES
    query_cells: int = 100
    query_where: tuple[tuple[str, str], ...] = ()
    context_where: tuple[tuple[str, str], ...] = ()
    next_cell: float | None = None  # time-column units after which to generate the next cell; None: no NextCell
    seed: int = 0
    contexts_per_cell: int = 1  # contexts from distinct donors per query cell; shifts are averaged over them


def delete(cell: np.ndarray, gene: int) -> np.ndarray | None:
    """The cell without the gene, or None when the cell does not express it (nothing to delete)."""
    keep = cell != gene
    return None if keep.all() else cell[keep]


def overexpress(cell: np.ndarray, gene: int, max_length: int) -> np.ndarray | None:
    """The gene moved to the top of the rank list (added when absent, pushing the last gene out of a cell
    at the length limit), or None when it already is the top gene."""
    if len(cell) > 1 and cell[1] == gene:
        return None
    rest = cell[1:-1][cell[1:-1] != gene]
    genes = np.concatenate([[gene], rest])[:max_length - 2]
    return np.concatenate([cell[:1], genes, cell[-1:]]).astype(cell.dtype)


def choose_genes(cells: AnalysisCells, queries: np.ndarray, options: PerturbOptions) -> np.ndarray:
    vocab = cells.vocab
    if options.genes:
        unknown = [g for g in options.genes if g not in vocab or not vocab.is_gene[vocab[g]]]
        if unknown:
            raise MaxtokiError(f"{len(unknown)} genes are not in the model's vocabulary (first: {unknown[0]}); "
                               "give Ensembl IDs as in the vocabulary")
        return np.array([vocab[g] for g in dict.fromkeys(options.genes)])
    counts = np.bincount(np.concatenate([cells.input_ids[q] for q in queries]).astype(np.int64),
                         minlength=len(vocab))
    counts[~vocab.is_gene] = 0
    ranked = np.argsort(-counts, kind="stable")
    return ranked[:min(options.top_genes, int((counts > 0).sum()))]


def perturb(model, cells: AnalysisCells, out: str | Path, context: ContextOptions, options: PerturbOptions,
            batch_size: int = 64, device: str = "cpu", allow_untrained_time: bool = False) -> pd.DataFrame:
    """Write effects.csv (one row per gene and mode), shifts.csv (per cell), contexts.csv, perturb.json and
    perturb.png. The shifts are of predicted time: a model whose time tokens stage 2 never trained is refused
    unless ``allow_untrained_time``."""
    warning = untrained_time_warning(model, allow_untrained_time)
    bad = [m for m in options.modes if m not in MODES]
    if bad:
        raise MaxtokiError(f"unknown perturbation {bad[0]!r}; choose from {', '.join(MODES)}")
    rng = np.random.default_rng(options.seed)
    eligible = cells.where(options.query_where)
    if not len(eligible):
        raise MaxtokiError(f"no cell matches {options.query_where}")
    if options.contexts_per_cell < 1:
        raise MaxtokiError("--contexts-per-cell must be at least 1")
    sampler = ContextSampler(cells, cells.where(options.context_where), context)
    queries, contexts = [], []
    for query in rng.permutation(eligible):
        chosen = sample_contexts(sampler, int(query), options.contexts_per_cell, rng)
        if chosen is not None:
            queries.append(int(query))
            contexts.append(chosen)
        if len(queries) == options.query_cells:
            break
    if not queries:
        enough = "a context donor" if options.contexts_per_cell == 1 else \
            f"{options.contexts_per_cell} context donors (lower --contexts-per-cell)"
        raise MaxtokiError(f"no query cell has {enough}; check --context-where, --match-columns and "
                           "--context-cells")
    genes = choose_genes(cells, np.array(queries), options)
    predictor = SharedContextPredictor(model, cells.vocab, batch_size, device)
    limit = model.config.max_position_embeddings
    shifts = []
    with progress_bar(len(queries), "perturb", unit="cells") as bar:
        for query, cell_contexts in zip(queries, contexts):
            cell = np.asarray(cells.input_ids[query])
            variants, labels = [cell], [None]
            for mode in options.modes:
                for gene in genes:
                    changed = delete(cell, gene) if mode == "delete" else overexpress(cell, gene, cells.max_length)
                    if changed is not None:
                        variants.append(changed)
                        labels.append((mode, int(gene)))
            longest = max(variants, key=len)
            deltas = np.mean([predictor(sampler.prompt(c, longest, limit)[0], variants) for c in cell_contexts],
                             axis=0)
            rows = [{"cell_id": cells.obs.index[query], "mode": mode, "gene": cells.vocab.token(gene),
                     "baseline": deltas[0] / context.time_scale, "shift": (delta - deltas[0]) / context.time_scale}
                    for (mode, gene), delta in zip(labels[1:], deltas[1:])]
            if options.next_cell is not None:
                for row, change in zip(rows, next_cell_changes(model, variants, cells.vocab, options.next_cell,
                                                               context, batch_size, device)):
                    row["next_cell_change"] = change
            shifts.extend(rows)
            bar.update(1)
    if not shifts:
        raise MaxtokiError(f"no perturbation changed any of the {len(queries)} query cells: the genes are not "
                           "expressed in them (delete), or already their top gene (overexpress)")
    per_cell = pd.DataFrame(shifts)
    effects = summarize(per_cell, len(queries))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_cell.to_csv(out / "shifts.csv", index=False)
    context_table(cells, queries, contexts, sampler).to_csv(out / "contexts.csv", index=False)
    effects.to_csv(out / "effects.csv", index=False)
    summary = {"query_cells": len(queries), "genes": len(genes), "options": {**asdict(options), **asdict(context)},
               "top": effects.head(10).to_dict(orient="records"), "warning": warning}
    (out / "perturb.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    _plot(effects, out / "perturb.png")
    return effects


def sample_contexts(sampler: ContextSampler, query: int, count: int, rng: np.random.Generator) -> list | None:
    """``count`` contexts for the query, each from another donor (averaging over donors evens out the
    context's own effect on the predicted timelapse), or None when fewer donors can give one."""
    chosen, donors = [], []
    for _ in range(count):
        context = sampler.sample(query, rng, exclude_donors=donors)
        if context is None:
            return None
        chosen.append(context)
        donors.append(sampler.donors[context[0]])
    return chosen


def context_table(cells: AnalysisCells, queries: list[int], contexts: list[list], sampler: ContextSampler):
    """The context cells each query cell was read after (one row per query cell and context)."""
    ids = cells.obs.index
    return pd.DataFrame([{"cell_id": ids[query], "context": k, "context_donor": sampler.donors[chosen[0]],
                          "context_cells": ";".join(ids[chosen])}
                         for query, cell_contexts in zip(queries, contexts) for k, chosen in enumerate(cell_contexts)])


def next_cell_changes(model, variants: list[np.ndarray], vocab, after: float, context: ContextOptions,
                      batch_size: int, device: str) -> list[float]:
    """1 - Jaccard overlap of the genes generated after each perturbed variant and after the unperturbed cell
    (``variants[0]``)."""
    from maxtoki.data.paragraphs.blueprint import NEXT_CELL
    from maxtoki.data.paragraphs.sampling import assemble, to_time_units
    from maxtoki.inference.generate import Sampling, generate_cells

    delta = int(to_time_units(np.array([after]), context.time_scale)[0])
    limit = model.config.max_position_embeddings
    prompts = [assemble([variant, variant], np.array([0, delta]), NEXT_CELL, vocab, limit)[0] for variant in variants]
    budget = min(max(len(v) for v in variants), limit - max(len(p) for p in prompts))
    generated = generate_cells(model, prompts, vocab, Sampling(max_new_tokens=budget), batch_size, device)
    genes = [set(cell[vocab.is_gene[cell]].tolist()) for cell in generated]
    return [1.0 - len(g & genes[0]) / max(len(g | genes[0]), 1) for g in genes[1:]]


def summarize(per_cell: pd.DataFrame, query_cells: int) -> pd.DataFrame:
    """Mean shift per gene and mode with its standard error, ranked by size (and the mean change of the
    generated next cell, when measured). ``mean_specific_shift`` subtracts in every cell the median shift of
    all genes perturbed there the same way: moving any gene to the top shifts the predicted time a little
    (benchmarks/README.md), and this is what the gene does beyond that; it needs many genes per cell."""
    grouped = per_cell.groupby(["mode", "gene"])
    effects = grouped["shift"].agg(cells="size", mean_shift="mean", std="std").reset_index()
    typical = per_cell.groupby(["cell_id", "mode"])["shift"].transform("median")
    effects["mean_specific_shift"] = (per_cell["shift"] - typical).groupby([per_cell["mode"], per_cell["gene"]]) \
        .mean().to_numpy()
    if "next_cell_change" in per_cell:
        effects["mean_next_cell_change"] = grouped["next_cell_change"].mean().to_numpy()
    effects["standard_error"] = effects["std"].fillna(0) / np.sqrt(effects["cells"])
    effects["fraction_of_cells"] = effects["cells"] / query_cells
    effects = effects.drop(columns="std").sort_values("mean_shift", key=np.abs, ascending=False)
    effects["rank"] = np.arange(1, len(effects) + 1)
    return effects.reset_index(drop=True)


def _plot(effects: pd.DataFrame, path: Path, top: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(effects["mode"]))
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 0.3 * top + 1.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = effects[effects["mode"] == mode].head(top)[::-1]
        colours = ["tab:red" if s > 0 else "tab:blue" for s in rows["mean_shift"]]
        ax.barh(rows["gene"], rows["mean_shift"], xerr=rows["standard_error"], color=colours)
        ax.axvline(0, color="black", linewidth=1)
        ax.set_title(f"{mode}: top {len(rows)} genes", fontsize=10)
        ax.set_xlabel("shift of the predicted time (time units; red: older)")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
