"""The ceiling baseline: a per-cell time classifier on the encoded cells, its Δ read from both cells of a prompt.
Exact cells and medians, a ceiling that reads planted time exactly and unplanted time not at all, and no scored
cell in what it was fitted on."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from maxtoki.inference.ceiling_baseline import (
    CellClock,
    ceiling_baseline,
    cells_of,
    rank_score_matrix,
    training_cells,
)
from maxtoki.vocab import Vocabulary

GENES = [f"ENSG{i:011d}" for i in range(1, 41)]


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build(GENES, max_time=100)


def prompt(vocab: Vocabulary, context: list[int], query: list[int]) -> np.ndarray:
    return np.array([vocab.bos_id, *context, vocab.eos_id, vocab.boq_id, *query, vocab.eoq_id])


def test_cells_of_a_prompt_and_of_a_paragraph_are_their_gene_runs(vocab):
    genes = vocab.gene_ids
    assert [c.tolist() for c in cells_of({"prompt_ids": prompt(vocab, genes[:3], genes[5:7])}, vocab)] == \
        [genes[:3].tolist(), genes[5:7].tolist()]
    paragraph = [vocab.bos_id, *genes[:2], vocab.eos_id, vocab.time_token(24), vocab.bos_id, *genes[9:12],
                 vocab.eos_id]
    assert [c.tolist() for c in cells_of({"input_ids": np.array(paragraph)}, vocab)] == \
        [genes[:2].tolist(), genes[9:12].tolist()]


def test_rank_scores_are_one_minus_rank_over_length(vocab):
    genes = vocab.gene_ids
    x = rank_score_matrix([genes[[4, 1, 7, 2]], genes[[3]]], vocab).toarray()
    assert x[0, genes[4]] == 1.0 and x[0, genes[1]] == 0.75 and x[0, genes[7]] == 0.5 and x[0, genes[2]] == 0.25
    assert x[1, genes[3]] == 1.0 and np.count_nonzero(x) == 5


def marked_cells(vocab, rng, n_per_time: int, times=(0, 24, 48, 72), marked: bool = True):
    """Cells of 12 random genes; with ``marked``, each time's own marker gene ranks first."""
    cells, cell_times = [], []
    markers = {t: vocab.gene_ids[i] for i, t in enumerate(times)}
    others = vocab.gene_ids[len(times):]
    for t in times:
        for _ in range(n_per_time):
            genes = rng.choice(others, 12, replace=False)
            cells.append(np.concatenate([[markers[t]], genes]) if marked else genes)
            cell_times.append(t)
    return cells, np.array(cell_times, dtype=float)


def examples_of(vocab, cells, times, pairs, first_index=0):
    return [{"prompt_ids": prompt(vocab, cells[i], cells[j]), "cell_indices": np.array([first_index + i,
                                                                                          first_index + j]),
             "times": np.array([times[i], times[j]]), "timelapse": times[j] - times[i], "group": "one"}
            for i, j in pairs]


def training_examples(vocab, cells, times):
    """Training paragraphs (TimeBetweenCells layout) in which every cell occurs."""
    order = np.arange(len(cells))
    pairs = zip(order, np.roll(order, 1))
    return [{"input_ids": np.concatenate([prompt(vocab, cells[i], cells[j]), [vocab.time_token(int(times[j] -
                                                                                                   times[i]))]]),
             "cell_indices": np.array([i, j]), "times": np.array([times[i], times[j]])} for i, j in pairs]


@pytest.mark.parametrize("marked", [True, False])
def test_the_ceiling_reads_planted_time_exactly_and_unplanted_time_not_at_all(vocab, marked):
    rng = np.random.default_rng(0)
    train_cells, train_times = marked_cells(vocab, rng, 15, marked=marked)
    test_cells, test_times = marked_cells(vocab, rng, 5, marked=marked)
    pairs = [(i, j) for i in range(len(test_cells)) for j in range(len(test_cells)) if test_times[i] != test_times[j]]
    evaluation = examples_of(vocab, test_cells, test_times, pairs, first_index=1000)
    predicted, how = ceiling_baseline(evaluation, vocab, training_examples(vocab, train_cells, train_times))
    true = np.array([e["timelapse"] for e in evaluation])
    mae = float(np.abs(predicted - true).mean())
    assert how["fitted"] == "fitted on the 60 cells of the training paragraphs"
    assert how["read_out"].startswith("per-cell logistic regression over 4 times")
    if marked:
        assert mae == 0.0
    else:  # no time in the cells: no better than always answering 0 (the truths are ±24, ±48, ±72)
        assert mae > 0.8 * np.abs(true).mean()


def test_without_training_paragraphs_no_cell_is_read_by_a_clock_fitted_on_it(vocab, monkeypatch):
    """Cross-fitted: each distinct evaluation cell is read by a clock whose training rows exclude it."""
    import maxtoki.inference.ceiling_baseline as module

    rng = np.random.default_rng(1)
    cells, times = marked_cells(vocab, rng, 6)
    pairs = [(i, j) for i in range(len(cells)) for j in range(len(cells)) if times[i] != times[j]][:150]
    evaluation = examples_of(vocab, cells, times, pairs)
    fitted_on, read = [], []
    original_fit, original_read = CellClock.fit, CellClock.read

    def fit(self, x, t):
        fitted_on.append({tuple(row) for row in x.toarray().round(6)})
        return original_fit(self, x, t)

    def read_cells(self, x):
        read.append({tuple(row) for row in x.toarray().round(6)})
        return original_read(self, x)

    monkeypatch.setattr(module.CellClock, "fit", fit)
    monkeypatch.setattr(module.CellClock, "read", read_cells)
    predicted, how = ceiling_baseline(evaluation, vocab)
    assert how["fitted"] == "cross-fitted over 5 folds of cells (no training paragraphs given)"
    assert len(fitted_on) == len(read) == 5
    for trained, scored in zip(fitted_on, read):
        assert trained.isdisjoint(scored)
    assert np.abs(predicted - np.array([e["timelapse"] for e in evaluation])).mean() == 0.0


def test_training_cells_are_the_distinct_cells_of_the_training_paragraphs(vocab):
    rng = np.random.default_rng(2)
    cells, times = marked_cells(vocab, rng, 3)
    paragraphs = training_examples(vocab, cells, times)
    got, got_times = training_cells(paragraphs + paragraphs, vocab)
    assert [c.tolist() for c in got] == [c.tolist() for c in cells]
    np.testing.assert_array_equal(got_times, times)
