"""Scores per donor, as single-cell ageing clocks report them: a donor's predicted time is the median
over its cells, so one noisy cell does not count as an error of the donor.

The predicted time of a query cell is the last context time plus its predicted Δ. For every held-out
donor and each of its true times, the median of the predicted times of its query cells is set against
that true time; MAE and Pearson r run over these (donor, time) points.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def per_donor(table: pd.DataFrame, predictors: dict[str, str]) -> pd.DataFrame:
    """One row per (donor, true time): the number of prompts and each predictor's median predicted time.

    ``table`` has ``donor``, ``context_time``, ``true_time`` and the predicted-Δ columns named by the values of
    ``predictors`` (name -> column).
    """
    times = table[["donor", "true_time"]].copy()
    for name, column in predictors.items():
        times[name] = table["context_time"] + table[column]
    grouped = times.groupby(["donor", "true_time"], sort=True)
    medians = grouped[list(predictors)].median()
    medians.insert(0, "prompts", grouped.size())
    return medians.reset_index()


def donor_scores(points: pd.DataFrame, predictors: list[str], score) -> dict:
    """``score(predicted, true)`` of each predictor over the (donor, time) points, with their numbers."""
    true = points["true_time"].to_numpy(dtype=float)
    return {"donors": int(points["donor"].nunique()), "points": len(points),
            **{name: score(points[name].to_numpy(dtype=float), true) for name in predictors}}


def donors_of(examples: list[dict], donor_of_cell: np.ndarray | None) -> np.ndarray:
    """The donor of each example's query cell: from a cell column, or else the example's group."""
    if donor_of_cell is None:
        return np.array([str(e["group"]) for e in examples], dtype=object)
    return np.array([donor_of_cell[int(e["cell_indices"][-1])] for e in examples], dtype=object)
