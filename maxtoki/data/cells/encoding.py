"""Rank value encoding of cells: pure, vectorised numpy with no loop over cells or genes.

value = count / n_counts * 10,000 / median[gene]; genes sorted by value descending, ties broken
by token id ascending; truncated to ``model_input_size - 2`` genes; wrapped as ``<bos> ... <eos>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

TARGET_SUM = 10_000.0
_MAX_ROWS_PER_KEY = 1 << 16  # rows and token ids each get 16 bits of the composite sort key


@dataclass
class EncodedCells:
    """Token sequences of a block of cells, stored flat: cell i is ``tokens[offsets[i]:offsets[i+1]]``.

    A cell with no encodable gene has length 0.
    """

    tokens: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


def rank_value_encode(
    matrix: sp.csr_matrix,
    n_counts: np.ndarray,
    token_ids: np.ndarray,
    medians: np.ndarray,
    model_input_size: int,
    bos_id: int,
    eos_id: int,
    dtype=np.uint16,
) -> EncodedCells:
    """Encode cells x genes ``matrix``; column j is token ``token_ids[j]`` with median ``medians[j]``.

    Zero entries (stored or not) are not genes of the cell. Cells whose ``n_counts`` is not positive
    get no tokens.
    """
    if model_input_size < 3:
        raise ValueError("model_input_size must leave room for <bos>, one gene and <eos>")
    n_cells = matrix.shape[0]
    if n_cells > _MAX_ROWS_PER_KEY:
        parts = [rank_value_encode(matrix[i:i + _MAX_ROWS_PER_KEY], n_counts[i:i + _MAX_ROWS_PER_KEY], token_ids,
                                   medians, model_input_size, bos_id, eos_id, dtype)
                 for i in range(0, n_cells, _MAX_ROWS_PER_KEY)]
        return _concatenate(parts)

    rows = np.repeat(np.arange(n_cells, dtype=np.int64), np.diff(matrix.indptr))
    values = np.array(matrix.data, dtype=np.float64)  # a copy: scaled in place below
    columns = matrix.indices
    if values.size and (values.min() <= 0 or n_counts.min() <= 0):
        usable = (values > 0) & (n_counts[rows] > 0)
        rows, values, columns = rows[usable], values[usable], columns[usable]
    values /= n_counts[rows]  # the reference's order of operations: count / n_counts * 10,000 / median
    values *= TARGET_SUM
    values /= medians[columns]
    tokens = np.asarray(token_ids, dtype=np.int64)[columns]
    order = _rank_order(rows, values, tokens)
    tokens = tokens[order]  # rows stay as they are: the order keeps every cell's block in place

    genes_per_cell = np.bincount(rows, minlength=n_cells)
    first = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(genes_per_cell, out=first[1:])
    position = np.arange(len(rows), dtype=np.int64) - first[rows]
    max_genes = model_input_size - 2
    keep = position < max_genes

    kept_per_cell = np.minimum(genes_per_cell, max_genes)
    lengths = np.where(kept_per_cell > 0, kept_per_cell + 2, 0)
    offsets = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=dtype)
    if keep.all():
        out[offsets[rows] + 1 + position] = tokens
    else:
        out[offsets[rows[keep]] + 1 + position[keep]] = tokens[keep]
    nonempty = np.flatnonzero(lengths)
    out[offsets[nonempty]] = bos_id
    out[offsets[nonempty + 1] - 1] = eos_id
    return EncodedCells(out, offsets)


def _rank_order(rows: np.ndarray, values: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Order entries by (row, value descending, token ascending) exactly.

    One stable sort of a 64-bit key (16 bits row, 32 bits float32 value, 16 bits token) is fast
    because entries already come grouped by row. Values that differ only beyond float32
    precision are then put right with an exact sort of just the affected cells.
    """
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    if tokens.max() >= _MAX_ROWS_PER_KEY:
        return np.lexsort((tokens, -values, rows))
    with np.errstate(over="ignore"):  # values beyond float32 range become inf: still ordered
        quantized = values.astype(np.float32).view(np.uint32)
    key = rows.astype(np.uint64) << np.uint64(48)
    key |= (np.uint64(0xFFFFFFFF) - quantized) << np.uint64(16)
    key |= tokens.astype(np.uint64)
    order = np.argsort(key, kind="stable")
    sorted_values = values[order]
    wrong = (rows[1:] == rows[:-1]) & (sorted_values[1:] > sorted_values[:-1])
    if wrong.any():
        bad_rows = np.zeros(int(rows[-1]) + 1, dtype=bool)
        bad_rows[rows[1:][wrong]] = True
        affected = np.flatnonzero(bad_rows[rows])
        sub = order[affected]
        order[affected] = sub[np.lexsort((tokens[sub], -values[sub], rows[sub]))]
    return order


def _concatenate(parts: list[EncodedCells]) -> EncodedCells:
    tokens = np.concatenate([p.tokens for p in parts])
    lengths = np.concatenate([p.lengths for p in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return EncodedCells(tokens, offsets)
