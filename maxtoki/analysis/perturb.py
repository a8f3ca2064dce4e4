"""In-silico perturbation screens: perturb genes in query cells' rank lists (``perturbations``: delete,
overexpress, inhibit, shift by k ranks, combinations of up to three genes) and read how the cell moves.

Two read-outs:

- ``time`` (the paper's driver screen; stage-2 models): each query cell gets ``contexts_per_cell`` contexts
  (as in ``prompts``), each from another donor; the unperturbed cell and all of its variants are read after
  every context, which runs once (``SharedContextPredictor``), and a variant's shift of the predicted time is
  averaged over the contexts, in time-column units. With ``next_cell``, every variant is also continued with
  NextCell and the change of the generated cell is one minus the Jaccard overlap of its genes with the
  unperturbed cell's continuation.
- ``embedding`` (Geneformer's; any model, stage 1 included): the cosine shift of the cell's embedding and,
  with start and goal states, its goal-state shift (``embedding_shift``).

Every query cell also gets rank-matched random-gene perturbations (``perturb_null``), which give each gene a
p-value and an FDR. Variants are scored in chunks of ``CHUNK``, so memory stays bounded for any panel.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd

from maxtoki.analysis.cells import AnalysisCells
from maxtoki.analysis.perturb_null import null_items, p_values
from maxtoki.analysis.perturbations import MAX_COMBINATION, Mode, apply, label, modes_from, parse_items, rank_in
from maxtoki.analysis.prompts import ContextOptions, ContextSampler
from maxtoki.console import progress_bar
from maxtoki.errors import MaxtokiError

READOUTS = ("time", "embedding")
CHUNK = 2048  # variants held at once per query cell (each is scored in batches of batch_size)


@dataclass(frozen=True)
class PerturbOptions:
    genes: tuple[str, ...] = ()  # Ensembl IDs, or GENE+GENE[+GENE] combinations; empty: the top_genes
    top_genes: int = 100
    modes: tuple[str, ...] = ("delete", "overexpress")
    shift_ranks: tuple[int, ...] = (5,)  # ranks a "shift" moves a gene: positive towards the top
    readout: str = "time"
    query_cells: int = 100
    query_where: tuple[tuple[str, str], ...] = ()
    context_where: tuple[tuple[str, str], ...] = ()
    start_state: tuple[str, str] | None = None  # (column, value): the query cells' state
    goal_state: tuple[str, str] | None = None  # (column, value): the state to move them towards
    state_cells: int = 1000  # cells per state averaged into its centroid (a random draw when more)
    null_genes: int = 20  # rank-matched random perturbations per query cell, mode and combination size
    layer: int = -1  # hidden layer of the embedding read-out (0: token embeddings, -1: the last)
    write_embeddings: bool = False
    next_cell: float | None = None  # time-column units after which to generate the next cell; None: no NextCell
    seed: int = 0
    contexts_per_cell: int = 1  # contexts from distinct donors per query cell; shifts are averaged over them


def choose_items(cells: AnalysisCells, queries: np.ndarray, options: PerturbOptions) -> list[tuple[int, ...]]:
    """The screened genes and combinations: given, or the ``top_genes`` expressed in most query cells."""
    vocab = cells.vocab
    if options.genes:
        return parse_items(options.genes, vocab)
    counts = np.bincount(np.concatenate([cells.input_ids[q] for q in queries]).astype(np.int64),
                         minlength=len(vocab))
    counts[~vocab.is_gene] = 0
    ranked = np.argsort(-counts, kind="stable")
    return [(int(g),) for g in ranked[:min(options.top_genes, int((counts > 0).sum()))]]


def perturb(model, cells: AnalysisCells, out: str | Path, context: ContextOptions | None, options: PerturbOptions,
            batch_size: int = 64, device: str = "cpu", allow_untrained_time: bool = False) -> pd.DataFrame:
    """Write effects.csv (one row per gene and mode), shifts.csv (per cell), nulls.csv (the random-gene
    perturbations), perturb.json and perturb.png; contexts.csv for the time read-out, perturbed_embeddings.h5ad
    with ``write_embeddings``. Everything is checked before anything is written."""
    rng = np.random.default_rng(options.seed)
    modes = modes_from(options.modes, options.shift_ranks)
    warning = _check(model, cells, context, options, allow_untrained_time)
    selection = options.query_where + ((options.start_state,) if options.start_state else ())
    eligible = cells.where(selection)
    if not len(eligible):
        where = " and ".join(f"{column}={value}" for column, value in selection)
        raise MaxtokiError(f"no cell matches {where}: the query set is empty")
    if options.readout == "time":
        reader = TimeReader(model, cells, context, options, batch_size, device)
        queries, contexts = reader.choose_queries(eligible, rng)
    else:
        reader = EmbeddingShiftReader(model, cells, options, batch_size, device, rng)
        queries, contexts = [int(q) for q in rng.permutation(eligible)[:options.query_cells]], None
    items = choose_items(cells, np.array(queries), options)
    panel = np.array(sorted({g for item in items for g in item}), dtype=np.int64)
    absent_pool = np.setdiff1d(np.unique(np.concatenate([cells.input_ids[q][1:-1] for q in queries])), panel)
    sizes = sorted({len(item) for item in items})
    shifts, nulls = [], []
    with progress_bar(len(queries), "perturb", unit="cells") as bar:
        for position, query in enumerate(queries):
            cell = np.asarray(cells.input_ids[query])
            null_sets = {(mode, size): null_items(cell, size, options.null_genes, panel, absent_pool,
                                                  not mode.needs_expression, rng)
                         for mode in modes for size in sizes} if options.null_genes else {}
            work = _variants(cell, items, null_sets, modes, cells.max_length)
            state = reader.start(cell, cells.obs.index[query], contexts[position] if contexts else None)
            while chunk := list(islice(work, CHUNK)):
                rows = reader.score(state, chunk)
                for (mode, item, is_null, variant), row in zip(chunk, rows):
                    row.update(cell_id=cells.obs.index[query], mode=mode.label, gene=label(item, cells.vocab),
                               size=len(item), rank=rank_in(cell, item))
                    (nulls if is_null else shifts).append(row)
            bar.update(1)
    if not shifts:
        raise MaxtokiError(f"no perturbation changed any of the {len(queries)} query cells: the genes are not "
                           "expressed in them (delete, inhibit, shift), or already where the perturbation puts "
                           "them")
    per_cell, null_table = pd.DataFrame(shifts), pd.DataFrame(nulls)
    effects = summarize(per_cell, len(queries), expressing(cells, queries, items))
    if len(null_table):
        effects = effects.merge(p_values(per_cell, null_table, "shift", reader.alternative), on=["mode", "gene"],
                                how="left")
    else:  # no null: every gene of the query cells is in the panel, or --null-genes 0
        effects = effects.assign(null_mean_shift=np.nan, p_value=np.nan, fdr=np.nan)
        warning = " ".join(filter(None, [warning, "no null perturbations (--null-genes 0, or the panel holds every "
                                                  "gene of the query cells): no p-values"]))
    # what the gene does beyond perturbing any gene at its ranks in the same cells
    effects["shift_beyond_null"] = effects["mean_shift"] - effects["null_mean_shift"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_cell.to_csv(out / "shifts.csv", index=False)
    null_table.to_csv(out / "nulls.csv", index=False)
    if contexts:
        context_table(cells, queries, contexts, reader.sampler).to_csv(out / "contexts.csv", index=False)
    effects.to_csv(out / "effects.csv", index=False)
    if options.write_embeddings:
        reader.write_embeddings(out / "perturbed_embeddings.h5ad")
    summary = {"readout": options.readout, "shift": reader.describes, "query_cells": len(queries),
               "genes": len(items), "modes": [m.label for m in modes], "null_perturbations": len(null_table),
               **reader.summary(), "options": {**asdict(options), **(asdict(context) if context else {})},
               "top": effects.head(10).to_dict(orient="records"), "warning": warning}
    (out / "perturb.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    _plot(effects, out / "perturb.png", reader.describes)
    return effects


def _check(model, cells: AnalysisCells, context, options: PerturbOptions, allow_untrained_time: bool):
    """Refuse what the screen cannot do, before it starts; returns the untrained-time warning, if any."""
    from maxtoki.inference.loading import untrained_time_warning

    if options.readout not in READOUTS:
        raise MaxtokiError(f"unknown --readout {options.readout!r}; choose from {', '.join(READOUTS)}")
    if options.null_genes < 0 or options.query_cells < 1:
        raise MaxtokiError("--null-genes must be at least 0 and --query-cells at least 1")
    if (options.start_state is None) != (options.goal_state is None):
        raise MaxtokiError("--start-state and --goal-state go together (e.g. age_group=old and age_group=young)")
    for name, state in (("--start-state", options.start_state), ("--goal-state", options.goal_state)):
        if state and not len(cells.where((state,))):
            column, value = state
            raise MaxtokiError(f"no cell has {column}={value} ({name}); the values are: "
                               f"{', '.join(sorted(map(str, cells.obs[column].unique())))}")
    if options.write_embeddings and options.readout != "embedding":
        raise MaxtokiError("--write-embeddings writes the perturbed cells' embeddings: it needs --readout embedding")
    if options.readout == "time" or options.next_cell is not None:
        if options.readout == "time" and context is None:
            raise MaxtokiError("--readout time reads cells after a context from one donor: give --donor-column")
        try:
            return untrained_time_warning(model, allow_untrained_time)
        except MaxtokiError as error:
            if options.readout == "time":
                raise MaxtokiError(f"{error}; or screen by the embedding shift, which needs no time tokens "
                                   "(--readout embedding)") from None
            raise
    return None


def _variants(cell, items, null_sets, modes: tuple[Mode, ...], max_length: int):
    """(mode, genes, is_null, perturbed cell) for the panel and the null perturbations that change the cell."""
    for mode in modes:
        for item in items:
            changed = apply(cell, np.asarray(item), mode, max_length)
            if changed is not None:
                yield mode, item, False, changed
    for (mode, _), sets in null_sets.items():
        for item in sets:
            changed = apply(cell, np.asarray(item), mode, max_length)
            if changed is not None:
                yield mode, item, True, changed


def expressing(cells: AnalysisCells, queries: list[int], items) -> dict[str, int]:
    """Query cells that express every gene of each screened item."""
    sets = [set(np.asarray(cells.input_ids[q][1:-1]).tolist()) for q in queries]
    return {label(item, cells.vocab): sum(all(g in genes for g in item) for genes in sets) for item in items}


class TimeReader:
    """The time read-out: shifts of the predicted time after contexts from other donors."""

    alternative = "two-sided"

    def __init__(self, model, cells, context: ContextOptions, options: PerturbOptions, batch_size, device):
        from maxtoki.analysis.timelapse import SharedContextPredictor

        if options.contexts_per_cell < 1:
            raise MaxtokiError("--contexts-per-cell must be at least 1")
        self.model, self.cells, self.context, self.options = model, cells, context, options
        self.batch_size, self.device = batch_size, device
        self.sampler = ContextSampler(cells, cells.where(options.context_where), context)
        self.predictor = SharedContextPredictor(model, cells.vocab, batch_size, device)
        self.describes = "shift of the predicted time (time-column units; positive: older)"

    def choose_queries(self, eligible: np.ndarray, rng) -> tuple[list[int], list]:
        queries, contexts = [], []
        for query in rng.permutation(eligible):
            chosen = sample_contexts(self.sampler, int(query), self.options.contexts_per_cell, rng)
            if chosen is not None:
                queries.append(int(query))
                contexts.append(chosen)
            if len(queries) == self.options.query_cells:
                break
        if not queries:
            count = self.options.contexts_per_cell
            enough = "a context donor" if count == 1 else f"{count} context donors (lower --contexts-per-cell)"
            raise MaxtokiError(f"no query cell has {enough}; check --context-where, --match-columns and "
                               "--context-cells")
        return queries, contexts

    def start(self, cell: np.ndarray, cell_id: str, cell_contexts) -> dict:
        """Cache every context of the cell (room left for a variant that grows by a combination's genes) and
        read the unperturbed cell after each."""
        limit = self.model.config.max_position_embeddings
        longest = np.concatenate([cell, cell[1:1 + MAX_COMBINATION - 1]])  # only its length counts
        cached = [self.predictor.cache(self.sampler.prompt(c, longest, limit)[0]) for c in cell_contexts]
        base = np.array([self.predictor.read(c, [cell])[0] for c in cached])
        state = {"cached": cached, "base": base, "cell": cell}
        if self.options.next_cell is not None:
            state["next_genes"] = self._next_genes([cell])[0]
        return state

    def score(self, state: dict, chunk) -> list[dict]:
        variants = [variant for _, _, _, variant in chunk]
        deltas = np.mean([self.predictor.read(c, variants) - b for c, b in zip(state["cached"], state["base"])],
                         axis=0)
        scale = self.context.time_scale
        rows = [{"baseline": state["base"].mean() / scale, "shift": delta / scale} for delta in deltas]
        if self.options.next_cell is not None:
            panel = [i for i, (_, _, is_null, _) in enumerate(chunk) if not is_null]
            generated = self._next_genes([variants[i] for i in panel])
            for i, genes in zip(panel, generated):
                rows[i]["next_cell_change"] = 1.0 - len(genes & state["next_genes"]) / \
                    max(len(genes | state["next_genes"]), 1)
        return rows

    def _next_genes(self, variants: list[np.ndarray]) -> list[set]:
        """The genes of the cell NextCell generates ``next_cell`` after each variant (greedy)."""
        from maxtoki.data.paragraphs.blueprint import NEXT_CELL
        from maxtoki.data.paragraphs.sampling import assemble, to_time_units
        from maxtoki.inference.generate import Sampling, generate_cells

        if not variants:
            return []
        vocab, limit = self.cells.vocab, self.model.config.max_position_embeddings
        delta = int(to_time_units(np.array([self.options.next_cell]), self.context.time_scale)[0])
        prompts = [assemble([v, v], np.array([0, delta]), NEXT_CELL, vocab, limit)[0] for v in variants]
        budget = min(max(len(v) for v in variants), limit - max(len(p) for p in prompts))
        generated = generate_cells(self.model, prompts, vocab, Sampling(max_new_tokens=budget), self.batch_size,
                                   self.device)
        return [set(cell[vocab.is_gene[cell]].tolist()) for cell in generated]

    def summary(self) -> dict:
        return {}


class EmbeddingShiftReader:
    """The embedding read-out: cosine shift, and goal-state shift between the states' centroids; with
    ``write_embeddings`` it keeps every query cell's and panel variant's embedding."""

    alternative = "two-sided"

    def __init__(self, model, cells: AnalysisCells, options: PerturbOptions, batch_size, device, rng):
        from maxtoki.analysis.embedding_shift import EmbeddingReader

        self.cells, self.options = cells, options
        self.reader = EmbeddingReader(model, cells.vocab, options.layer, batch_size, device)
        self.centroids, self.state_counts, self.kept = None, {}, []
        if options.goal_state is not None:
            self.centroids = tuple(self._centroid(state, rng) for state in (options.start_state, options.goal_state))
            self.describes = (f"goal-state shift {'='.join(options.start_state)} -> {'='.join(options.goal_state)} "
                              "(change of cosine similarity to the goal's centroid minus that to the start's; "
                              "positive: towards the goal)")
        else:
            self.alternative = "greater"
            self.describes = "cosine shift of the cell embedding (1 - cosine similarity to the unperturbed cell)"

    def _centroid(self, state: tuple[str, str], rng) -> np.ndarray:
        members = self.cells.where((state,))
        if len(members) > self.options.state_cells:
            members = np.sort(rng.choice(members, self.options.state_cells, replace=False))
        self.state_counts["=".join(state)] = len(members)
        return self.reader.pooled([self.cells.input_ids[m] for m in members]).mean(axis=0)

    def start(self, cell: np.ndarray, cell_id: str, _contexts) -> dict:
        from maxtoki.analysis.embedding_shift import pooled_without

        prefix = self.reader.prefix(cell)
        states = prefix.states.float().cpu().numpy()
        if self.options.write_embeddings:
            self.kept.append((cell_id, None, None, pooled_without(cell, states, self.cells.vocab.is_gene, ())))
        return {"cell": cell, "cell_id": cell_id, "prefix": prefix, "states": states}

    def score(self, state: dict, chunk) -> list[dict]:
        from maxtoki.analysis.embedding_shift import pooled_without, shifts

        items = [item for _, item, _, _ in chunk]
        perturbed = self.reader.pooled_variants(state["prefix"], [variant for _, _, _, variant in chunk], items)
        original = np.stack([pooled_without(state["cell"], state["states"], self.cells.vocab.is_gene, item)
                             for item in items])
        start, goal = self.centroids if self.centroids else (None, None)
        measured = shifts(original, perturbed, start, goal)
        if self.options.write_embeddings:
            self.kept += [(state["cell_id"], mode, item, vector)
                          for (mode, item, is_null, _), vector in zip(chunk, perturbed) if not is_null]
        primary = "goal_shift" if goal is not None else "cosine_shift"
        return [{"shift": float(measured[primary][i]), **{k: float(v[i]) for k, v in measured.items()}}
                for i in range(len(chunk))]

    def write_embeddings(self, path: Path) -> None:
        """The unperturbed cells (mode "none") and their panel variants, obsm["X_maxtoki"]."""
        import anndata as ad

        from maxtoki.inference.embed import EMBEDDING_KEY

        obs = pd.DataFrame({
            "cell_id": [cell_id for cell_id, _, _, _ in self.kept],
            "mode": ["none" if mode is None else mode.label for _, mode, _, _ in self.kept],
            "gene": ["" if item is None else label(item, self.cells.vocab) for _, _, item, _ in self.kept]})
        obs.index = [f"{c}:{m}:{g}" if g else c for c, m, g in zip(obs["cell_id"], obs["mode"], obs["gene"])]
        adata = ad.AnnData(obs=obs)
        adata.obsm[EMBEDDING_KEY] = np.stack([vector for *_, vector in self.kept]).astype(np.float32)
        adata.uns["maxtoki_embedding"] = {"layer": self.options.layer, "pooling": "mean of gene tokens; a "
                                          "variant's leave out the perturbed genes"}
        adata.write_h5ad(path)

    def summary(self) -> dict:
        return {"layer": self.options.layer, "state_cells": self.state_counts}


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


def summarize(per_cell: pd.DataFrame, query_cells: int, expressing: dict[str, int] | None = None) -> pd.DataFrame:
    """Mean shift per gene and mode with its standard error, ranked by size (and the means of the other
    measured columns). ``mean_specific_shift`` subtracts in every cell the median shift of all genes perturbed
    there the same way: moving any gene to the top shifts the predicted time a little (benchmarks/README.md),
    and this is what the gene does beyond that; it needs many genes per cell."""
    grouped = per_cell.groupby(["mode", "gene"])
    effects = grouped["shift"].agg(cells="size", mean_shift="mean", std="std").reset_index()
    typical = per_cell.groupby(["cell_id", "mode"])["shift"].transform("median")
    effects["mean_specific_shift"] = (per_cell["shift"] - typical).groupby([per_cell["mode"], per_cell["gene"]]) \
        .mean().to_numpy()
    for column in ("cosine_shift", "goal_shift", "next_cell_change"):
        if column in per_cell:
            effects[f"mean_{column}"] = grouped[column].mean().to_numpy()
    effects["standard_error"] = effects["std"].fillna(0) / np.sqrt(effects["cells"])
    effects["fraction_of_cells"] = effects["cells"] / query_cells
    if expressing is not None:
        effects["cells_expressing"] = effects["gene"].map(expressing).astype(int)
    effects = effects.drop(columns="std").sort_values("mean_shift", key=np.abs, ascending=False, kind="stable")
    effects["rank"] = np.arange(1, len(effects) + 1)
    return effects.reset_index(drop=True)


def _plot(effects: pd.DataFrame, path: Path, describes: str, labelled: int = 8) -> None:
    """Per mode: mean shift against significance (-log10 p against the rank-matched nulls), FDR < 0.05 in red,
    the strongest genes named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(effects["mode"]))
    fig, axes = plt.subplots(1, len(modes), figsize=(4.5 * len(modes), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = effects[effects["mode"] == mode]
        height = -np.log10(rows["p_value"].fillna(1.0).clip(lower=1e-300))
        hit = rows["fdr"] < 0.05  # NaN (no null) is no hit
        ax.scatter(rows["mean_shift"], height, s=10, c=np.where(hit, "tab:red", "tab:grey"))
        for _, row in rows.head(labelled).iterrows():
            ax.annotate(row["gene"], (row["mean_shift"], height[row.name]), fontsize=6)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{mode}: {len(rows)} genes, {int(hit.sum())} at FDR < 0.05", fontsize=9)
        ax.set_xlabel(describes if len(describes) < 60 else describes.split(" (")[0], fontsize=8)
        ax.set_ylabel("-log10 p (vs rank-matched random genes)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
