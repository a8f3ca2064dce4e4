"""Judging generated cells on hand-made cells with known answers: each time point has its own gene program,
so a real cell's time is readable, copying the context cell reads as the context's time, and merged cells
are called doublets."""

import numpy as np
import pytest

from maxtoki.inference.judge_cells import JUDGED, judge, merge_cells, rank_matrix
from maxtoki.vocab import Vocabulary

TIMES = (0, 10, 20)
SHARED, PROGRAM, CELLS_PER_TIME = 20, 30, 20


@pytest.fixture(scope="module")
def course():
    """Cells of three times: shared genes and 20 of their time's 30 program genes, shuffled; NextCell examples."""
    vocab = Vocabulary.build([f"G{i:03d}" for i in range(SHARED + PROGRAM * len(TIMES))], max_time=30)
    genes = vocab.gene_ids
    rng = np.random.default_rng(0)
    cells, times = {}, {}
    for t, time in enumerate(TIMES):
        program = genes[SHARED + PROGRAM * t:SHARED + PROGRAM * (t + 1)]
        for _ in range(CELLS_PER_TIME):
            chosen = rng.permutation(np.concatenate([genes[:SHARED], rng.choice(program, 20, replace=False)]))
            cells[len(cells)] = np.concatenate([[vocab.bos_id], chosen, [vocab.eos_id]])
            times[len(times)] = time
    examples = []
    for _ in range(60):
        first, second = rng.choice(len(cells), 2, replace=False)
        while times[second] == times[first]:
            second = rng.integers(len(cells))
        examples.append({"cell_indices": np.array([first, second]), "times": np.array([times[first], times[second]]),
                         "timelapse": times[second] - times[first]})
    return vocab, cells, examples


def test_real_response_cells_as_generated_score_the_ceiling_and_are_singlets(course):
    vocab, cells, examples = course
    result = judge([cells[int(e["cell_indices"][-1])] for e in examples], examples, cells, vocab)
    summary = result["summary"]
    assert summary["time"]["generated"] == summary["time"]["real_response_cell"]
    assert summary["nearest_real_similarity"]["generated"] == summary["nearest_real_similarity"]["real_response_cell"]
    assert summary["time"]["real_response_cell"]["accuracy"] == 1.0  # never by matching itself: it is left out
    assert summary["singlets"]["generated"] >= 0.9 and summary["singlets"]["real_held_out_cells"] >= 0.9
    assert summary["reference_cells"] == len({int(i) for e in examples for i in e["cell_indices"]})


def test_copying_the_last_context_cell_reads_as_the_context_time(course):
    vocab, cells, examples = course
    result = judge([cells[int(e["cell_indices"][-2])] for e in examples], examples, cells, vocab)
    copied = result["summary"]["time"]["copy_last_context_cell"]
    # a copy looks like its own time: never the target (Δ is never 0), off by exactly |Δ|
    assert copied["accuracy"] == 0.0
    assert copied["mae"] == pytest.approx(np.mean([abs(int(e["timelapse"])) for e in examples]))
    # a generated cell that copies its context is judged as the copy is, not matched with itself
    assert result["summary"]["time"]["generated"] == copied
    assert np.array_equal(result["per_example"]["implied_time_generated"],
                          np.array([int(e["times"][0]) for e in examples]))


def test_merged_cells_of_two_times_are_judged_doublets(course):
    vocab, cells, examples = course
    merged = [merge_cells(cells[int(e["cell_indices"][0])], cells[int(e["cell_indices"][1])], vocab) for e in examples]
    summary = judge(merged, examples, cells, vocab)["summary"]
    assert summary["singlets"]["generated"] <= 0.1
    assert summary["singlets"]["simulated_doublets"] <= 0.1 and summary["singlets"]["real_held_out_cells"] >= 0.9
    assert set(summary["time"]) == set(JUDGED) and summary["chance_accuracy"] < 0.5


def test_cells_unlike_any_real_cell_are_far_from_their_nearest_real_cell(course):
    vocab, cells, examples = course
    rng = np.random.default_rng(1)
    noise = [np.concatenate([[vocab.bos_id], rng.choice(vocab.gene_ids, 40, replace=False), [vocab.eos_id]])
             for _ in examples]
    nearest = judge(noise, examples, cells, vocab)["summary"]["nearest_real_similarity"]
    assert nearest["generated"] < nearest["real_response_cell"] - 0.2


def test_a_merged_cell_ranks_genes_by_their_mean_rank_score():
    vocab = Vocabulary.build(["A", "B", "C", "D"], max_time=5)
    a, b, c, d = (vocab[g] for g in "ABCD")
    first = np.array([vocab.bos_id, a, b, c, vocab.eos_id])  # scores A 1, B 2/3, C 1/3
    second = np.array([vocab.bos_id, d, a, vocab.eos_id])  # scores D 1, A 1/2
    # means: A 3/4, D 1/2, B 1/3, C 1/6; as long as the longer cell (three genes)
    assert merge_cells(first, second, vocab).tolist() == [vocab.bos_id, a, d, b, vocab.eos_id]
    matrix = rank_matrix([first, second], vocab)
    assert np.allclose(np.linalg.norm(matrix.toarray(), axis=1), 1.0)
    assert matrix[0, a] > matrix[0, b] > matrix[0, c] > 0 and matrix[0, d] == 0
