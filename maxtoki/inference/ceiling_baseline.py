"""The ceiling baseline for TimeBetweenCells: how much time the encoded cells themselves carry.

A per-cell time classifier (multinomial logistic regression on the rank scores of a cell's genes, the
same encoding the model reads: a gene at rank r of n scores 1 - r/n) is fitted on the training cells
alone, each with its own time. A prompt's Δ is then read from both of its cells, exactly as the model
must: the classifier's time for the query cell minus its time for the last context cell (its most likely
times; the median of the Δ its probabilities imply was worse, as a regularised classifier's probabilities
are too flat on few cells). With more distinct times than a classifier suits (continuous ages), a ridge
regressor per cell, and Δ the difference of its two readings.

It is not a competitor the model must beat but a measure of the signal available: a linear read-out of
the model's own input, per cell. A model far behind it has not learned to read what its cells carry; a
model near it needs longer cells (more genes) to do better. Without training paragraphs it is
cross-fitted: every cell is read by a classifier fitted on other groups' cells (or, with one group, on
cells of other folds), so no scored cell is ever in its training set.
"""

from __future__ import annotations

import numpy as np

from maxtoki.vocab import Vocabulary

MAX_CLASSES = 50  # more distinct times than this: a regressor per cell instead of a classifier
MAX_TRAINING_CELLS = 20_000  # a random subset beyond this (the signal saturates long before; fitting does not)
FOLDS = 5


def cells_of(example: dict, vocab: Vocabulary) -> list[np.ndarray]:
    """The gene tokens of each cell of a paragraph or prompt, in order (cells are the runs of gene tokens
    between special and time tokens)."""
    ids = np.asarray(example["prompt_ids"] if "prompt_ids" in example else example["input_ids"])
    genes = vocab.is_gene[ids]
    edges = np.flatnonzero(np.diff(np.concatenate([[False], genes, [False]]).astype(np.int8)))
    return [ids[start:end].astype(np.int64) for start, end in zip(edges[::2], edges[1::2])]


def rank_score_matrix(cells: list[np.ndarray], vocab: Vocabulary):
    """Sparse (cells x vocabulary) rank scores, 1 - r/n for the gene at rank r of a cell of n genes."""
    import scipy.sparse as sp

    lengths = np.array([len(cell) for cell in cells], dtype=np.int64)
    rows = np.repeat(np.arange(len(cells)), lengths)
    columns = np.concatenate(cells) if cells else np.zeros(0, dtype=np.int64)
    values = np.concatenate([1.0 - np.arange(n) / max(n, 1) for n in lengths]) if cells else np.zeros(0)
    return sp.csr_matrix((values, (rows, columns)), shape=(len(cells), len(vocab)))


class CellClock:
    """A per-cell time read-out: ``distributions`` (rows over ``times``) for a classifier, ``values`` for a
    regressor."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.times: np.ndarray | None = None
        self._model = None

    def fit(self, x, times: np.ndarray) -> CellClock:
        distinct = np.unique(times)
        if len(distinct) < 2:
            raise ValueError("a per-cell time read-out needs cells of at least two times")
        if len(distinct) <= MAX_CLASSES:
            from sklearn.linear_model import LogisticRegression

            self.times = distinct
            self._model = LogisticRegression(C=1.0, max_iter=3000, random_state=self.seed).fit(x, times)
        else:
            from sklearn.linear_model import Ridge

            self.times = None
            self._model = Ridge(alpha=1.0, random_state=self.seed).fit(x, times)
        return self

    def read(self, x) -> np.ndarray:
        """Per cell: a distribution over ``times`` (classifier) or a time (regressor)."""
        if self.times is not None:
            return self._model.predict_proba(x)
        return self._model.predict(x)


def _pair_timelapses(clock: CellClock, readings: np.ndarray, context: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Query time minus context time, each cell's time the classifier's most likely one (or the regressor's)."""
    times = readings if clock.times is None else clock.times[np.argmax(readings, axis=1)]
    return times[query] - times[context]


def _prompt_cells(examples: list[dict], vocab: Vocabulary) -> tuple[list[np.ndarray], np.ndarray]:
    """Every prompt's last context cell and query cell (as arrays of gene tokens), and their positions
    (prompt x 2: context, query) in that list."""
    cells = []
    for example in examples:
        parts = cells_of(example, vocab)
        cells += [parts[-2], parts[-1]]
    return cells, np.arange(2 * len(examples)).reshape(-1, 2)


def training_cells(training: list[dict], vocab: Vocabulary, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """The distinct cells of training paragraphs (both tasks) with their times, read from the paragraphs as the
    model saw them; at most ``MAX_TRAINING_CELLS``, drawn at random."""
    seen: dict[int, tuple[np.ndarray, float]] = {}
    for example in training:
        indices, times = np.asarray(example["cell_indices"]), np.asarray(example["times"])
        parts = cells_of(example, vocab)
        if len(parts) != len(indices):
            continue  # a cell cut to nothing by the paragraph's length: its tokens are not all there
        for index, time, cell in zip(indices.tolist(), times.tolist(), parts):
            seen.setdefault(index, (cell, float(time)))
    keys = sorted(seen)
    if len(keys) > MAX_TRAINING_CELLS:
        keys = sorted(np.random.default_rng(seed).choice(keys, MAX_TRAINING_CELLS, replace=False).tolist())
    return [seen[k][0] for k in keys], np.array([seen[k][1] for k in keys])


def ceiling_baseline(evaluation: list[dict], vocab: Vocabulary, training: list[dict] | None = None,
                     seed: int = 0) -> tuple[np.ndarray, dict]:
    """Predicted timelapses of the evaluation prompts, and how they were made."""
    cells, pairs = _prompt_cells(evaluation, vocab)
    x = rank_score_matrix(cells, vocab)
    if training:
        train_cells, train_times = training_cells(training, vocab, seed)
        if len(np.unique(train_times)) >= 2:
            clock = CellClock(seed).fit(rank_score_matrix(train_cells, vocab), train_times)
            return (_pair_timelapses(clock, clock.read(x), pairs[:, 0], pairs[:, 1]),
                    _how(clock, f"fitted on the {len(train_cells):,} cells of the training paragraphs"))
    return _cross_fitted(evaluation, cells, x, pairs, seed)


def _how(clock: CellClock, fitted: str) -> dict:
    kind = (f"logistic regression over {len(clock.times)} times, Δ the difference of the two cells' most likely times"
            if clock.times is not None else "ridge regression, Δ the difference of the two cells' readings")
    return {"read_out": f"per-cell {kind}", "fitted": fitted}


def _cross_fitted(evaluation: list[dict], cells: list[np.ndarray], x, pairs: np.ndarray, seed: int):
    """Without training paragraphs: each distinct evaluation cell read by a clock fitted on cells of other
    folds (folds of groups where there are several, else of cells)."""
    from sklearn.model_selection import GroupKFold, KFold

    cell_ids = np.array([[int(e["cell_indices"][-2]), int(e["cell_indices"][-1])] for e in evaluation]).ravel()
    cell_times = np.array([[float(e["times"][-2]), float(e["times"][-1])] for e in evaluation]).ravel()
    groups = np.repeat([str(e["group"]) for e in evaluation], 2)
    distinct, first = np.unique(cell_ids, return_index=True)
    n_groups = len(np.unique(groups[first]))
    if n_groups >= 2:
        folds = GroupKFold(min(FOLDS, n_groups)).split(first, groups=groups[first])
        fitted = f"cross-fitted over {min(FOLDS, n_groups)} folds of groups (no training paragraphs given)"
    else:
        folds = KFold(min(FOLDS, len(first)), shuffle=True, random_state=seed).split(first)
        fitted = f"cross-fitted over {min(FOLDS, len(first))} folds of cells (no training paragraphs given)"
    all_times = np.unique(cell_times)
    readings = None
    for train_rows, test_rows in folds:
        train_at, test_at = first[train_rows], first[test_rows]
        clock = CellClock(seed).fit(x[train_at], cell_times[train_at])
        read = clock.read(x[test_at])
        if readings is None:
            readings = np.zeros((len(first), len(all_times))) if clock.times is not None else np.zeros(len(first))
        if clock.times is not None:  # a fold may lack some times: its columns go where they belong
            readings[np.ix_(test_rows, np.searchsorted(all_times, clock.times))] = read
        else:
            readings[test_rows] = read
    position = np.searchsorted(distinct, cell_ids)  # each prompt cell's row among the distinct cells
    clock.times = all_times if clock.times is not None else None
    predicted = _pair_timelapses(clock, readings[position], pairs[:, 0], pairs[:, 1])
    return predicted, _how(clock, fitted)
