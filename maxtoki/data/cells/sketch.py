"""A mergeable log-histogram sketch of per-gene value distributions, for corpus-wide medians.

Each non-zero normalized value v falls in bin floor(log(v) / log(1.01)); the bin stands for its
geometric centre. Quantization is monotone, so the median of the quantized values is within
sqrt(1.01) - 1 = 0.499% of the exact median, for any number of cells. Memory grows with the number
of occupied (gene, bin) pairs, never with the number of cells, and sketches of chunks merge by
adding counts: chunks and files can be processed in parallel and in any order.
"""

from __future__ import annotations

import numpy as np

BIN_RATIO = 1.01
_LOG_RATIO = np.log(BIN_RATIO)
_BIN_BITS = 24  # bin index offset into 24 bits: covers ratios of 1.01 ** +-8.4 million
_BIN_OFFSET = 1 << (_BIN_BITS - 1)
_COMPACT_EVERY = 8


class MedianSketch:
    """Counts of (gene, bin) pairs for string gene IDs; ``add`` chunks, ``merge`` sketches."""

    def __init__(self):
        self.genes: list[str] = []
        self._gene_index: dict[str, int] = {}
        self._keys = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []

    def _global_indices(self, genes: list[str]) -> np.ndarray:
        out = np.empty(len(genes), dtype=np.int64)
        for i, gene in enumerate(genes):
            idx = self._gene_index.get(gene)
            if idx is None:
                idx = self._gene_index[gene] = len(self.genes)
                self.genes.append(gene)
            out[i] = idx
        return out

    def add(self, genes: list[str], columns: np.ndarray, values: np.ndarray) -> None:
        """Add positive ``values``; ``columns`` index into ``genes``."""
        if len(values) == 0:
            return
        bins = np.floor(np.log(values) / _LOG_RATIO).astype(np.int64) + _BIN_OFFSET
        keys = (self._global_indices(genes)[columns] << _BIN_BITS) | bins
        keys, counts = np.unique(keys, return_counts=True)
        self._push(keys, counts.astype(np.int64))

    def merge(self, other: MedianSketch) -> None:
        keys, counts = other.state()
        if len(keys) == 0:
            return
        remap = self._global_indices(other.genes)
        self._push((remap[keys >> _BIN_BITS] << _BIN_BITS) | (keys & ((1 << _BIN_BITS) - 1)), counts)

    def _push(self, keys: np.ndarray, counts: np.ndarray) -> None:
        self._pending.append((keys, counts))
        if len(self._pending) >= _COMPACT_EVERY:
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self._keys, *(k for k, _ in self._pending)])
        counts = np.concatenate([self._counts, *(c for _, c in self._pending)])
        self._pending = []
        self._keys, inverse = np.unique(keys, return_inverse=True)
        self._counts = np.bincount(inverse, weights=counts, minlength=len(self._keys)).astype(np.int64)

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        self._compact()
        return self._keys, self._counts

    def cells_per_gene(self) -> dict[str, int]:
        """Number of non-zero values seen per gene."""
        keys, counts = self.state()
        totals = np.bincount(keys >> _BIN_BITS, weights=counts, minlength=len(self.genes))
        return {gene: int(totals[i]) for i, gene in enumerate(self.genes)}

    def medians(self) -> dict[str, float]:
        """Median per gene of the quantized values (average of the two middle ones when even)."""
        keys, counts = self.state()
        if len(keys) == 0:
            return {}
        gene = keys >> _BIN_BITS
        centre = BIN_RATIO ** ((keys & ((1 << _BIN_BITS) - 1)) - _BIN_OFFSET + 0.5)
        cumulative = np.cumsum(counts)
        starts = np.flatnonzero(np.r_[True, gene[1:] != gene[:-1]])
        before = np.r_[0, cumulative][starts]  # values of earlier genes
        totals = np.add.reduceat(counts, starts)
        lower_rank = before + (totals - 1) // 2  # 0-based global ranks of the middle values
        upper_rank = before + totals // 2
        lower = centre[np.searchsorted(cumulative, lower_rank, side="right")]
        upper = centre[np.searchsorted(cumulative, upper_rank, side="right")]
        medians = (lower + upper) / 2
        return {self.genes[g]: float(m) for g, m in zip(gene[starts], medians)}
