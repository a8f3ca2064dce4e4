"""Reading validated chunks of cells: the step medians and tokenization share.

A chunk is the cells x output-genes matrix (mapped, duplicates summed) plus each cell's
``n_counts`` (from obs, else the sum over all genes of the input) and ``filter_pass`` verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from maxtoki.data.cells.genes import GeneProjection
from maxtoki.data.cells.sources import CellSource
from maxtoki.errors import InputFileError


@dataclass
class CellChunk:
    start: int
    end: int
    matrix: sp.csr_matrix  # cells x projection.output_genes
    n_counts: np.ndarray  # float64 per cell
    passes_filter: np.ndarray  # bool per cell


def chunk_ranges(start: int, end: int, chunk_size: int):
    for lo in range(start, end, chunk_size):
        yield lo, min(lo + chunk_size, end)


def plan_parts(cell_counts: list[int], part_size: int) -> list[tuple[int, int, int]]:
    """Split every input into (input index, start, end) parts of at most ``part_size`` cells.

    Parts depend only on the inputs, never on the number of workers, so the output is the same
    however many processes write it.
    """
    return [(i, lo, hi) for i, n in enumerate(cell_counts) for lo, hi in chunk_ranges(0, n, part_size)]


class ChunkReader:
    """Reads row ranges of one source through a gene projection, validating values on the way."""

    def __init__(self, source: CellSource, projection: GeneProjection, allow_non_integer: bool = False,
                 min_expression: float = 0.0):
        self.source = source
        self.projection = projection
        self.allow_non_integer = allow_non_integer
        self.min_expression = min_expression
        self._has_n_counts = "n_counts" in source.obs_columns
        self._has_filter = "filter_pass" in source.obs_columns
        self._gene_ids: list[str] | None = None

    def read(self, start: int, end: int) -> CellChunk:
        raw = self.source.matrix(start, end)
        self._validate(raw, start)
        if self.min_expression > 0:  # estimation noise in FPKM/TPM data (values such as 1e-40)
            raw = raw.copy()  # never modify the caller's matrix
            raw.data[raw.data < self.min_expression] = 0
            raw.eliminate_zeros()
        if self._has_n_counts:
            n_counts = self.source.numeric_obs("n_counts", start, end)
        else:
            n_counts = np.asarray(raw.sum(axis=1), dtype=np.float64).ravel()
        n_counts = np.where(np.isfinite(n_counts), n_counts, 0.0)
        if self._has_filter:
            passes = self.source.numeric_obs("filter_pass", start, end) == 1
        else:
            passes = np.ones(end - start, dtype=bool)
        return CellChunk(start, end, self.projection.apply(raw), n_counts, passes)

    def _validate(self, raw: sp.csr_matrix, start: int) -> None:
        data = raw.data
        checks = [
            (~np.isfinite(data), "holds NaN or infinite values", "Fix or remove these cells."),
            (data < 0, "holds negative values", "Give raw counts (--layer or --use-raw); scaled or "
                                                "centred data cannot be rank value encoded."),
        ]
        if not self.allow_non_integer:
            checks.append((data != np.round(data), "holds non-integer values (log-normalized or scaled?)",
                           "Give raw integer counts with --layer NAME or --use-raw, or pass "
                           "--allow-non-integer for FPKM/TPM data."))
        for mask, problem, advice in checks:
            bad = np.flatnonzero(mask)
            if len(bad):
                raise InputFileError(self.source.path, f"the expression matrix {problem}, e.g. {float(data[bad[0]]):g} "
                                                       f"{self._where(raw, start, bad[0])}. {advice}")

    def _where(self, raw: sp.csr_matrix, start: int, entry: int) -> str:
        row = int(np.searchsorted(raw.indptr, entry, side="right") - 1)
        if self._gene_ids is None:
            self._gene_ids = self.source.gene_ids()
        gene = str(self._gene_ids[raw.indices[entry]])
        cell = str(self.source.cell_ids(start + row, start + row + 1)[0])
        return f"in cell {cell!r} (row {start + row}), gene {gene!r}"
