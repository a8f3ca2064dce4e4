"""Judging generated cells against real held-out cells: do they look like their target time, and are they
single cells rather than averages of cells.

Every cell is read as the model sees it, rank scores (a gene at rank r of n scores 1 - r/n; see
``linear_baseline``), and compared by cosine similarity. The reference is the set of real cells of
the evaluation paragraphs (held out of training when the paragraphs are a held-out split), each with its
time (time units) from the paragraphs.

- **Time**: a cell's implied time is the time with the largest summed similarity among its
  ``neighbours`` most similar reference cells. It is scored against the example's target time (last
  context time + Δ) as accuracy (implied == target) and mean absolute error, for the generated cell,
  for the baseline of copying the last context cell, and for the real response cell as a ceiling.
- **Single cells**: simulated doublets are two reference cells of different times merged into one
  rank list (genes ordered by their mean rank score, as long as the longer of the two). An average of
  cells is closer to every cell than a single cell is, so a cell is described by its similarity to the
  reference cells (mean over all, mean of the ``neighbours`` nearest, nearest, second nearest) and a
  logistic regression on these four numbers, fitted on reference cells against doublets, calls it a
  singlet or a doublet. Controls: the singlet share of reference cells and of doublets, each scored by
  a regression fitted on the other folds (five folds of reference cells; doublets are made within a
  fold); the generated cells are scored by the regression fitted on all. A cell unlike every real cell
  is no average either and passes this check; the median similarity of each kind of cell to its
  nearest real cell, reported beside it, shows such cells.

No cell is compared with itself: each judged cell of an example is compared with the reference
cells outside that example (its context cells and its real response cell are left out); a reference
cell leaves out itself, a doublet its two cells. So copying the context cell cannot find itself, and a
generated cell that copies its context is judged as the copy is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maxtoki.errors import MaxtokiError
from maxtoki.inference.linear_baseline import _rank_scores
from maxtoki.vocab import Vocabulary

JUDGED = ("generated", "copy_last_context_cell", "real_response_cell")


@dataclass(frozen=True)
class JudgeOptions:
    neighbours: int = 10
    doublets_per_cell: float = 1.0  # simulated doublets per reference cell (balanced classes)
    seed: int = 0

    def __post_init__(self):
        if self.neighbours < 1 or self.doublets_per_cell <= 0:
            raise MaxtokiError("JudgeOptions: neighbours must be at least 1 and doublets_per_cell positive")


def rank_matrix(cells: list[np.ndarray], vocab: Vocabulary):
    """Sparse (cells x vocabulary) rank scores, rows scaled to unit length (a dot product is the cosine)."""
    import scipy.sparse as sp

    rows, columns, values = [], [], []
    for row, cell in enumerate(cells):
        genes, scores = _rank_scores(np.asarray(cell), vocab)
        rows.append(np.full(len(genes), row))
        columns.append(genes)
        values.append(scores / max(float(np.linalg.norm(scores)), 1e-12))
    return sp.csr_matrix((np.concatenate([[], *values]), (np.concatenate([[], *rows]).astype(np.int64),
                                                         np.concatenate([[], *columns]).astype(np.int64))),
                         shape=(len(cells), len(vocab)))


def merge_cells(first: np.ndarray, second: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """A simulated doublet: the genes of both cells by mean rank score (ties by token id), as long as the longer."""
    genes_a, scores_a = _rank_scores(np.asarray(first), vocab)
    genes_b, scores_b = _rank_scores(np.asarray(second), vocab)
    genes, where = np.unique(np.concatenate([genes_a, genes_b]), return_inverse=True)
    merged = np.zeros(len(genes))
    np.add.at(merged, where, np.concatenate([scores_a, scores_b]) / 2)
    order = np.lexsort((genes, -merged))[:max(len(genes_a), len(genes_b))]
    return np.concatenate([[vocab.bos_id], genes[order], [vocab.eos_id]]).astype(np.asarray(first).dtype)


def _nearest(judged, candidates, excluded: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns and similarities of the k most similar candidates of every judged row (excluded ones never)."""
    similarity = np.asarray((judged @ candidates.T).todense(), dtype=np.float64)
    similarity[excluded] = -np.inf
    k = min(k, similarity.shape[1])
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


def implied_times(judged, reference, reference_times: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """The time with the largest summed similarity among each judged cell's k nearest reference cells.

    Ties (a cell sharing no gene with any reference cell) go to the time with the most reference cells.
    """
    times, codes = np.unique(reference_times, return_inverse=True)
    order, similarity = _nearest(judged, reference, excluded, k)
    votes = np.zeros((judged.shape[0], len(times)))
    rows = np.repeat(np.arange(judged.shape[0]), order.shape[1])
    np.add.at(votes, (rows, codes[order].ravel()), np.where(np.isfinite(similarity), similarity, 0).ravel())
    votes += 1e-9 * np.bincount(codes, minlength=len(times)) / len(codes)
    return times[votes.argmax(axis=1)]


def time_scores(implied: np.ndarray, target: np.ndarray) -> dict:
    error = np.abs(np.asarray(implied, dtype=np.float64) - target)
    return {"accuracy": float((error == 0).mean()), "mae": float(error.mean()),
            "median_absolute_error": float(np.median(error))}


def simulate_doublets(times: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count x 2) positions of pairs of cells of different times (none when all are of one time)."""
    if len(np.unique(times)) < 2:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.empty((0, 2), dtype=np.int64)
    while len(pairs) < count:
        draw = rng.integers(0, len(times), size=(2 * count, 2))
        pairs = np.concatenate([pairs, draw[times[draw[:, 0]] != times[draw[:, 1]]]])
    return pairs[:count]


def similarity_profile(judged, reference, excluded: np.ndarray, k: int) -> np.ndarray:
    """(cells x 4): mean cosine to the reference cells, mean of the k nearest, nearest, second nearest."""
    similarity = np.asarray((judged @ reference.T).todense(), dtype=np.float64)
    similarity[excluded] = np.nan
    ordered = -np.sort(-np.nan_to_num(similarity, nan=-np.inf), axis=1)
    ordered[~np.isfinite(ordered)] = np.nan
    return np.column_stack([np.nanmean(similarity, axis=1), np.nanmean(ordered[:, :k], axis=1), ordered[:, 0],
                            ordered[:, min(1, ordered.shape[1] - 1)]])


def _doublet_classifier():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))


@dataclass
class Reference:
    """The real cells of evaluation paragraphs: their cell indices, tokens and times (time units)."""

    indices: np.ndarray
    cells: list[np.ndarray]
    times: np.ndarray

    @classmethod
    def of(cls, examples: list[dict], cells: dict[int, np.ndarray]) -> "Reference":
        times: dict[int, int] = {}
        for example in examples:
            for index, time in zip(np.asarray(example["cell_indices"]).tolist(), np.asarray(example["times"]).tolist()):
                if times.setdefault(int(index), int(time)) != int(time):
                    raise MaxtokiError(f"cell {index} has two times in the paragraphs ({times[index]} and {time}); "
                                       "remake them")
        indices = np.array(sorted(times), dtype=np.int64)
        return cls(indices, [np.asarray(cells[int(i)]) for i in indices],
                   np.array([times[int(i)] for i in indices], dtype=np.int64))


def judge(generated: list[np.ndarray], examples: list[dict], cells: dict[int, np.ndarray], vocab: Vocabulary,
          options: JudgeOptions = JudgeOptions()) -> dict:
    """Scores of the generated cells of NextCell examples (``cells``: every cell index of the examples -> tokens).

    Returns the summary (JSON-ready) under "summary" and per-example arrays (target time, implied times,
    singlet probabilities) under "per_example".
    """
    reference = Reference.of(examples, cells)
    if len(np.unique(reference.times)) < 2:
        raise MaxtokiError("the evaluation paragraphs' cells are all of one time; there is no time to tell apart")
    if len(reference.indices) < options.neighbours + 2:
        raise MaxtokiError(f"the evaluation paragraphs hold {len(reference.indices)} real cells, too few to judge "
                           f"against (at least {options.neighbours + 2}); make more examples")
    position = {int(index): row for row, index in enumerate(reference.indices)}
    own = np.zeros((len(examples), len(reference.indices)), dtype=bool)  # each example's own cells
    for row, example in enumerate(examples):
        own[row, [position[int(i)] for i in example["cell_indices"]]] = True
    target = np.array([int(e["times"][-2]) + int(e["timelapse"]) for e in examples], dtype=np.int64)
    judged = {"generated": list(generated),
              "copy_last_context_cell": [cells[int(e["cell_indices"][-2])] for e in examples],
              "real_response_cell": [cells[int(e["cell_indices"][-1])] for e in examples]}
    reference_matrix = rank_matrix(reference.cells, vocab)
    matrices = {name: rank_matrix(judged[name], vocab) for name in JUDGED}
    implied = {name: implied_times(matrices[name], reference_matrix, reference.times, own, options.neighbours)
               for name in JUDGED}
    nearest = {name: float(np.median(similarity_profile(matrices[name], reference_matrix, own, 1)[:, 2]))
               for name in JUDGED}
    singlet, controls = _doublet_check(matrices["generated"], own, reference, reference_matrix, vocab, options)
    most_common = np.bincount(np.unique(reference.times, return_inverse=True)[1]).argmax()
    summary = {
        "examples": len(examples), "reference_cells": len(reference.indices),
        "reference_times": {str(t): int(n) for t, n in zip(*np.unique(reference.times, return_counts=True))},
        "genes_per_cell": {name: float(np.mean([np.asarray(vocab.is_gene[np.asarray(c)]).sum() for c in judged[name]]))
                           for name in JUDGED},
        "neighbours": options.neighbours,
        "time": {name: time_scores(implied[name], target) for name in JUDGED},
        "chance_accuracy": float((target == np.unique(reference.times)[most_common]).mean()),
        "nearest_real_similarity": nearest,
        "singlets": {"generated": float((singlet > 0.5).mean()), **controls},
        "how": "each judged cell of an example is compared with the real cells outside that example; a real "
               "control cell leaves out itself, a simulated doublet its two cells",
    }
    return {"summary": summary, "per_example": {"target_time": target, **{f"implied_time_{n}": implied[n]
                                                                          for n in JUDGED},
                                                "singlet_probability": singlet}}


DOUBLET_FOLDS = 5


def _doublet_check(generated, own: np.ndarray, reference: Reference, reference_matrix, vocab, options):
    """Singlet probability of the generated cells, and the singlet shares of the out-of-fold controls."""
    rng = np.random.default_rng(options.seed)
    n = len(reference.indices)
    fold = rng.permutation(n) % DOUBLET_FOLDS
    pairs = np.concatenate([np.empty((0, 2), dtype=np.int64)] + [
        members[simulate_doublets(reference.times[members], round(options.doublets_per_cell * len(members)), rng)]
        for members in (np.flatnonzero(fold == f) for f in range(DOUBLET_FOLDS))])
    if len(pairs) < 2:
        raise MaxtokiError("too few real cells of different times to simulate doublets from")
    doublets = rank_matrix([merge_cells(reference.cells[a], reference.cells[b], vocab) for a, b in pairs], vocab)
    parents = np.zeros((len(pairs), n), dtype=bool)
    parents[np.arange(len(pairs)), pairs[:, 0]] = parents[np.arange(len(pairs)), pairs[:, 1]] = True
    k = options.neighbours
    x = np.vstack([similarity_profile(reference_matrix, reference_matrix, np.eye(n, dtype=bool), k),
                   similarity_profile(doublets, reference_matrix, parents, k)])
    is_doublet = np.concatenate([np.zeros(n, dtype=int), np.ones(len(pairs), dtype=int)])
    item_fold = np.concatenate([fold, fold[pairs[:, 0]]])
    singlet = np.full(len(x), np.nan)
    for f in range(DOUBLET_FOLDS):
        train, test = item_fold != f, item_fold == f
        if test.any() and len(np.unique(is_doublet[train])) == 2:
            singlet[test] = _doublet_classifier().fit(x[train], is_doublet[train]).predict_proba(x[test])[:, 0]
    scored = ~np.isnan(singlet)
    classifier = _doublet_classifier().fit(x, is_doublet)
    generated_singlet = classifier.predict_proba(similarity_profile(generated, reference_matrix, own, k))[:, 0]
    return generated_singlet, {"real_held_out_cells": float((singlet[:n][scored[:n]] > 0.5).mean()),
                               "simulated_doublets": float((singlet[n:][scored[n:]] > 0.5).mean()),
                               "doublets_simulated": len(pairs)}


def plot_judgement(result: dict, path) -> None:
    """Target time against implied time (rows sum to 1) for each judged cell, and the singlet shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_example, summary = result["per_example"], result["summary"]
    target = per_example["target_time"]
    times = np.unique(np.concatenate([target, *(per_example[f"implied_time_{n}"] for n in JUDGED)]))
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6), gridspec_kw={"width_ratios": [1, 1, 1, 0.8]},
                             layout="constrained")
    titles = {"generated": "generated cell", "copy_last_context_cell": "baseline: copy last context cell",
              "real_response_cell": "ceiling: real response cell"}
    for ax, name in zip(axes, JUDGED):
        counts = np.zeros((len(times), len(times)))
        np.add.at(counts, (np.searchsorted(times, target), np.searchsorted(times, per_example[f"implied_time_{name}"])),
                  1)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (row, column), count in np.ndenumerate(counts):
            if count:
                ax.text(column, row, int(count), ha="center", va="center",
                        color="white" if shares[row, column] > 0.5 else "black", fontsize=8)
        score = summary["time"][name]
        ax.set_title(f"{titles[name]}\naccuracy {score['accuracy']:.2f}, MAE {score['mae']:.1f}", fontsize=10)
        ax.set_xticks(range(len(times)), [str(t) for t in times], rotation=90 if len(times) > 8 else 0)
        ax.set_yticks(range(len(times)), [str(t) for t in times])
        ax.set_xlabel("implied time (nearest real cells)")
        ax.set_ylabel("target time")
    singlets = summary["singlets"]
    labels = ["generated", "real held-out\ncells", "simulated\ndoublets"]
    values = [singlets["generated"], singlets["real_held_out_cells"], singlets["simulated_doublets"]]
    axes[3].bar(labels, values, color=["tab:blue", "tab:green", "tab:red"])
    axes[3].set_ylim(0, 1)
    axes[3].set_ylabel("share classified as single cells")
    axes[3].set_title("single cells, not averages?", fontsize=10)
    for i, value in enumerate(values):
        axes[3].text(i, value + 0.02, f"{value:.2f}", ha="center")
    fig.savefig(path, dpi=110)
    plt.close(fig)
