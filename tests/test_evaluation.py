"""What predict time sets the model against, computed exactly on hand-made paragraphs: the paper's naive
baseline (the most common time of the query cell's kind among training cells) and the scores per donor
(the median predicted time of each donor's cells at each of its times)."""

import numpy as np
import pandas as pd
import pytest

from maxtoki.inference.donor_scores import donor_scores, donors_of, per_donor
from maxtoki.inference.naive_baseline import CellTimes, cell_kinds, naive_timelapses
from maxtoki.inference.predict_time import scores


def example(cells, times, group="g"):
    return {"cell_indices": np.array(cells), "times": np.array(times), "group": group}


# cells 0-5: kind T cells at 10, 10, 20 and B cells at 30, 30, 40; cells 6-7 are of a kind never trained on
COLUMNS = {"cell_type": np.array(["T", "T", "T", "B", "B", "B", "NK", "NK"], dtype=object),
           "sex": np.array(["f"] * 8, dtype=object)}
TRAINING = [example([0, 2], [10, 20]), example([1, 3], [10, 30]), example([4, 5], [30, 40])]


def test_the_naive_baseline_is_the_most_common_training_time_of_the_query_kind_minus_the_last_context_time():
    kinds = cell_kinds(COLUMNS, ("cell_type", "sex"))
    reference = CellTimes.of(TRAINING, kinds)
    assert sorted(zip(reference.cells.tolist(), reference.times.tolist())) == [
        (0, 10), (1, 10), (2, 20), (3, 30), (4, 30), (5, 40)]
    queries = [example([3, 2], [30, 20]),  # a T query after a context at 30: T cells are mostly at 10 -> -20
               example([0, 5], [10, 40]),  # a B query: mostly at 30 -> 30 - 10
               example([1, 6], [10, 50])]  # an NK query, a kind no training cell has: all cells, 10 and 30 tie
    predicted, fit = naive_timelapses(queries, kinds, reference)
    assert predicted.tolist() == [-20, 20, 0]  # ties go to the earliest time: 10 - 10
    assert fit == {"kinds": 2, "queries_of_unseen_kinds": 1}
    one_kind = cell_kinds({}, ())  # no columns: the most common time of all training cells (10 and 30 tie: 10)
    predicted, fit = naive_timelapses(queries, one_kind, CellTimes.of(TRAINING, one_kind))
    assert predicted.tolist() == [-20, 0, 0] and fit == {"kinds": 1, "queries_of_unseen_kinds": 0}


def test_without_training_paragraphs_each_query_cell_is_left_out_of_its_own_count():
    kinds = cell_kinds(COLUMNS, ("cell_type",))
    evaluation = [example([3, 4], [30, 30]), example([4, 5], [30, 40]), example([0, 3], [10, 30])]
    reference = CellTimes.of(evaluation, kinds)  # B cells: 3 and 4 at 30, 5 at 40; T cell 0 at 10
    predicted, fit = naive_timelapses(evaluation, kinds, reference, leave_query_out=True)
    # query 4 (B, 30): without it, B cells are 3 at 30 and 5 at 40 -> 30; query 5 (B, 40) -> 30;
    # query 3 (B, 30) -> 30 still (cell 4); the T kind is never a query
    assert predicted.tolist() == [30 - 30, 30 - 30, 30 - 10]
    alone = [example([0, 6], [10, 50])]  # the only NK cell: left out, its kind has no cell; all cells but it: 10
    predicted, fit = naive_timelapses(alone, kinds, CellTimes.of(alone, kinds), leave_query_out=True)
    assert predicted.tolist() == [0] and fit["queries_of_unseen_kinds"] == 1


def test_scores_per_donor_take_the_median_predicted_time_of_each_donor_and_time():
    table = pd.DataFrame({
        "donor": ["a", "a", "a", "b", "b", "b"],
        "context_time": [0, 10, 0, 0, 0, 20],
        "true_time": [20, 20, 20, 10, 10, 30],
        "model_delta": [18, 14, 40, 5, 7, 8],  # predicted times: a@20 -> 18, 24, 40; b@10 -> 5, 7; b@30 -> 28
        "mean_delta": [1, 1, 1, 1, 1, 1],
    })
    points = per_donor(table, {"model": "model_delta", "baseline": "mean_delta"})
    assert points.to_dict(orient="list") == {"donor": ["a", "b", "b"], "true_time": [20, 10, 30],
                                             "prompts": [3, 2, 1], "model": [24.0, 6.0, 28.0],
                                             "baseline": [1.0, 1.0, 21.0]}
    result = donor_scores(points, ["model", "baseline"], scores)
    assert (result["donors"], result["points"]) == (2, 3)
    assert result["model"]["mae"] == pytest.approx((4 + 4 + 2) / 3)
    assert result["baseline"]["mae"] == pytest.approx((19 + 9 + 9) / 3)


def test_a_query_cells_donor_comes_from_a_cell_column_or_else_the_group():
    examples = [example([0, 3], [0, 1], group="d1"), example([2, 1], [0, 1], group="d2")]
    assert donors_of(examples, None).tolist() == ["d1", "d2"]
    assert donors_of(examples, np.array(["x", "y", "z", "w"], dtype=object)).tolist() == ["w", "y"]
