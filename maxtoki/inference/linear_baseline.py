"""The linear baseline of the paper (an ``SGDRegressor``), for TimeBetweenCells: the timelapse regressed
on the expression of the last context cell and of the query cell.

Expression is what the model sees, the rank-value encoding: a gene at rank r of a cell with n genes
scores 1 - r/n, an absent gene 0. Fitted on the training paragraphs; without them, on the evaluation
examples themselves by cross-fitting over groups (each example is predicted by a regressor that
never saw its group) or, with one group, over examples such that no regressor is fitted on an
example sharing a cell with one it scores; so the baseline is always scored on cells it was not
fitted on.
"""

from __future__ import annotations

import numpy as np

from maxtoki.vocab import Vocabulary


def prompt_of(example: dict) -> np.ndarray:
    """The prompt of an evaluation example, or of a training example (``input_ids`` up to ``prompt_length``)."""
    if "prompt_ids" in example:
        return np.asarray(example["prompt_ids"])
    return np.asarray(example["input_ids"])[:int(example["prompt_length"])]


def _rank_scores(cell: np.ndarray, vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    genes = cell[vocab.is_gene[cell]]
    return genes.astype(np.int64), 1.0 - np.arange(len(genes)) / max(len(genes), 1)


def features(examples: list[dict], vocab: Vocabulary):
    """Sparse (examples x 2·vocabulary) rank scores: the last context cell's block, then the query's."""
    import scipy.sparse as sp

    rows, columns, values = [], [], []
    for row, example in enumerate(examples):
        prompt = prompt_of(example)
        boq = int(np.flatnonzero(prompt == vocab.boq_id)[-1])
        context_start = int(np.flatnonzero(prompt[:boq] == vocab.bos_id)[-1])
        for offset, cell in ((0, prompt[context_start:boq]), (len(vocab), prompt[boq + 1:-1])):
            genes, scores = _rank_scores(cell, vocab)
            rows.append(np.full(len(genes), row))
            columns.append(genes + offset)
            values.append(scores)
    return sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))),
                         shape=(len(examples), 2 * len(vocab)))


def _regressor(seed: int):
    from sklearn.linear_model import SGDRegressor

    return SGDRegressor(alpha=1e-3, max_iter=2000, tol=1e-5, random_state=seed)


def _fit_predict(train_x, train_y: np.ndarray, test_x, seed: int) -> np.ndarray:
    scale = float(train_y.std()) or 1.0
    mean = float(train_y.mean())
    regressor = _regressor(seed).fit(train_x, (train_y - mean) / scale)
    return regressor.predict(test_x) * scale + mean


def linear_baseline(evaluation: list[dict], vocab: Vocabulary, training: list[dict] | None = None,
                    folds: int = 5, seed: int = 0) -> tuple[np.ndarray, str]:
    """Predicted timelapses of the evaluation examples, and how they were fitted."""
    from sklearn.model_selection import GroupKFold, KFold

    x = features(evaluation, vocab)
    if training:
        train_y = np.array([float(e["timelapse"]) for e in training])
        return _fit_predict(features(training, vocab), train_y, x, seed), "fitted on the training paragraphs"
    y = np.array([float(e["timelapse"]) for e in evaluation])
    groups = np.array([str(e["group"]) for e in evaluation])
    n_groups = len(np.unique(groups))
    if n_groups >= 2:
        splits = GroupKFold(min(folds, n_groups)).split(x, y, groups)
        how = f"cross-fitted over {min(folds, n_groups)} folds of groups"
    else:
        count = min(CELL_DISJOINT_FOLDS, len(y))
        cells = [set(np.asarray(e["cell_indices"]).tolist()) for e in evaluation] \
            if all("cell_indices" in e for e in evaluation) else None
        splits = list(cell_disjoint_folds(cells, count, seed)) if cells else []
        how = (f"cross-fitted over {count} folds of examples (one group only), never on an example sharing a cell "
               "with one it scores")
        if not splits or min(len(train_rows) for train_rows, _ in splits) < 2:
            splits = KFold(min(folds, len(y)), shuffle=True, random_state=seed).split(x, y)
            why = "too few examples share no cell with the others" if cells else "the data does not name its cells"
            how = (f"cross-fitted over {min(folds, len(y))} folds of examples (one group only; they may share cells: "
                   f"{why}; give --train-data)")
    predicted = np.empty(len(y))
    for train_rows, test_rows in splits:
        predicted[test_rows] = _fit_predict(x[train_rows], y[train_rows], x[test_rows], seed)
    return predicted, how


CELL_DISJOINT_FOLDS = 20  # small folds: the examples sharing no cell with a fold stay most of the others


def cell_disjoint_folds(cells: list[set], folds: int, seed: int = 0):
    """(training rows, test rows) of each fold: the training rows share no cell with any test row."""
    rows = np.random.default_rng(seed).permutation(len(cells))
    for test_rows in np.array_split(rows, folds):
        used = set().union(*(cells[i] for i in test_rows))
        train_rows = np.array([i for i in range(len(cells)) if cells[i].isdisjoint(used)], dtype=np.int64)
        yield train_rows, np.sort(test_rows)
