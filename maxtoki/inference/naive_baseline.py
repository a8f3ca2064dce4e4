"""The paper's naive baseline for TimeBetweenCells, which needs no model and no expression: a query cell is
taken to be at the most common time of the training cells of its kind (e.g. ``cell_type`` and ``sex``), so
the predicted Δ is that time minus the last context time.

A model that does not beat it has learned no more than which kinds of cells occur when. Kinds no
training cell has fall back to the most common time of all training cells; without training paragraphs
the evaluation cells serve, each query cell left out of the counts its own prediction reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CellTimes:
    """Distinct (cell, time) pairs of a set of paragraphs, and the kind of each cell."""

    cells: np.ndarray  # cell index into the store
    times: np.ndarray  # time units
    kinds: np.ndarray  # str, one per cell

    @classmethod
    def of(cls, examples: list[dict], kind_of) -> CellTimes:
        pairs = np.unique(np.concatenate([np.stack([np.asarray(e["cell_indices"], dtype=np.int64),
                                                    np.asarray(e["times"], dtype=np.int64)], axis=1)
                                          for e in examples]), axis=0)
        return cls(pairs[:, 0], pairs[:, 1], kind_of[pairs[:, 0]])


class OneKind:
    """Every cell is of the same kind (no baseline columns): the most common time of all reference cells."""

    def __getitem__(self, cells):
        return "all cells" if np.ndim(cells) == 0 else np.full(np.shape(cells), "all cells", dtype=object)


def cell_kinds(columns: dict[str, np.ndarray], baseline_columns: tuple[str, ...]):
    """The kind of every cell (indexable by cell index): its values of ``baseline_columns`` joined."""
    if not baseline_columns:
        return OneKind()
    return np.array(["|".join(parts) for parts in zip(*(columns[c] for c in baseline_columns))], dtype=object)


Counts = tuple[np.ndarray, np.ndarray]  # distinct times and how many reference cells have each


def time_counts(reference: CellTimes) -> tuple[dict[str, Counts], Counts]:
    """Per kind, and over all kinds: the distinct times of the reference cells and their counts."""
    by_kind = {kind: np.unique(reference.times[reference.kinds == kind], return_counts=True)
               for kind in np.unique(reference.kinds)}
    return by_kind, np.unique(reference.times, return_counts=True)


def most_common(counts: Counts, left_out: int | None = None) -> int | None:
    """The most common time (ties: the earliest), not counting one cell at ``left_out``; None when none is left."""
    times, number = counts
    if left_out is not None:
        number = number - (times == left_out)
    return int(times[np.argmax(number)]) if number.sum() > 0 else None


def naive_timelapses(examples: list[dict], kind_of, reference: CellTimes,
                     leave_query_out: bool = False) -> tuple[np.ndarray, dict]:
    """Predicted Δ of every example, and how it was made (kinds, and queries whose kind fell back).

    ``leave_query_out``: the reference holds the evaluation cells themselves, so each query cell's own
    (cell, time) is not counted for it.
    """
    by_kind, overall = time_counts(reference)
    empty = (np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    predicted, fallbacks = np.empty(len(examples)), 0
    for row, example in enumerate(examples):
        query, query_time = int(example["cell_indices"][-1]), int(example["times"][-1])
        left_out = query_time if leave_query_out else None
        guess = most_common(by_kind.get(kind_of[query], empty), left_out)
        if guess is None:
            guess, fallbacks = most_common(overall, left_out), fallbacks + 1
        predicted[row] = guess - int(example["times"][-2])
    return predicted, {"kinds": len(by_kind), "queries_of_unseen_kinds": fallbacks}
