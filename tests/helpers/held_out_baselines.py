"""What a model must beat on held-out donors' paragraphs: the training-mean Δ for TimeBetweenCells and the
training genes' frequencies for NextCell (tests/test_learning.py and its fast counterpart in
tests/test_analysis.py)."""

from __future__ import annotations

import numpy as np

from maxtoki.data.paragraphs.cell_store import CellStore
from maxtoki.vocab import Vocabulary


def held_out_baselines(train: str, val: str, vocab: Vocabulary) -> tuple[float, float]:
    """Median |Δ - training mean Δ| on validation, and the unigram cross-entropy of validation responses."""
    def split(path):
        deltas, genes = [], []
        for example in CellStore(path):
            if example["task"] == 1:
                deltas.append(example["timelapse"])
            else:
                genes.append(example["input_ids"][example["prompt_length"]:])
        return np.array(deltas, dtype=float), np.concatenate(genes).astype(int)

    train_deltas, train_genes = split(train)
    val_deltas, val_genes = split(val)
    median_error = float(np.median(np.abs(val_deltas - train_deltas.mean())))
    frequencies = np.bincount(train_genes, minlength=len(vocab)) + 1.0
    unigram = float(-np.log(frequencies[val_genes] / frequencies.sum()).mean())
    return median_error, unigram
