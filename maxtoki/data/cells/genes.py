"""Gene identifiers: normalisation, symbol -> Ensembl mapping, and projecting input columns onto genes.

Ensembl IDs are upper-cased and lose their version suffix (``ENSG00000000003.10`` and
``ENSG00000000003.10_PAR_Y`` both become ``ENSG00000000003``). Other identifiers (symbols such as
``RP11-34P13.7``) are only upper-cased: their dots are part of the name, not a version.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from maxtoki.errors import InputFileError

_ENSEMBL_RE = re.compile(r"^(ENS[A-Z]*G\d+)(?:\.\d+)?(?:_PAR_Y)?$")


def normalize_gene_id(gene_id: str) -> str:
    gene_id = str(gene_id).strip().upper()
    match = _ENSEMBL_RE.match(gene_id)
    return match.group(1) if match else gene_id


def is_ensembl_id(gene_id: str) -> bool:
    return bool(_ENSEMBL_RE.match(str(gene_id).strip().upper()))


class GeneMapping:
    """Symbol -> Ensembl ID table (for example GENCODE's ``gene_id,gene_name`` CSV).

    A symbol with several Ensembl IDs resolves to one the caller prefers (genes of the vocabulary),
    else to the smallest ID, so the choice is deterministic.
    """

    def __init__(self, symbol_to_ids: dict[str, list[str]], source: str = "<memory>"):
        self.symbol_to_ids = {sym: sorted(set(ids)) for sym, ids in symbol_to_ids.items()}
        self.source = source

    @classmethod
    def from_csv(cls, path: str | Path) -> GeneMapping:
        """Two columns, Ensembl ID and symbol in either order, with or without a header row."""
        path = Path(path)
        try:
            with open(path, newline="") as handle:
                rows = [row for row in csv.reader(handle) if row]
        except (OSError, UnicodeDecodeError) as exc:
            raise InputFileError(path, f"cannot read the gene mapping ({exc})") from None
        if not rows or any(len(row) < 2 for row in rows[:1000]):
            raise InputFileError(path, "a gene mapping needs two columns per row: Ensembl ID and symbol")
        sample = rows[1:1001] or rows
        ensembl_share = [np.mean([is_ensembl_id(row[i]) for row in sample]) for i in (0, 1)]
        id_col = int(np.argmax(ensembl_share))
        if ensembl_share[id_col] < 0.9:
            raise InputFileError(path, "neither of the first two columns holds Ensembl gene IDs")
        if not is_ensembl_id(rows[0][id_col]):
            rows = rows[1:]  # header row
        table: dict[str, list[str]] = {}
        for row in rows:
            gene_id, symbol = normalize_gene_id(row[id_col]), row[1 - id_col].strip().upper()
            if symbol:
                table.setdefault(symbol, []).append(gene_id)
        return cls(table, source=str(path))

    def resolve(self, gene_id: str, preferred: Callable[[str], bool] | None = None) -> str | None:
        """The Ensembl ID for a (normalised) input identifier; Ensembl IDs pass through."""
        if _ENSEMBL_RE.match(gene_id):
            return gene_id
        candidates = self.symbol_to_ids.get(gene_id)
        if not candidates:
            return None
        if preferred is not None:
            chosen = [c for c in candidates if preferred(c)]
            if chosen:
                return chosen[0]
        return candidates[0]


@dataclass(frozen=True)
class GeneProjection:
    """Maps a file's columns onto output genes: ``column_to_output[j]`` is an output index or -1.

    Several input columns may map to one output gene; their values are summed.
    """

    column_to_output: np.ndarray  # int64, one per input column
    output_genes: list[str]  # gene IDs, one per output index
    has_duplicates: bool

    @property
    def n_mapped_columns(self) -> int:
        return int((self.column_to_output >= 0).sum())

    def apply(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """Cells x output genes, duplicates summed, unmapped columns dropped, explicit zeros removed."""
        target = self.column_to_output[matrix.indices]
        keep = (target >= 0) & (matrix.data != 0)
        rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
        row_counts = np.bincount(rows[keep], minlength=matrix.shape[0])
        indptr = np.zeros(matrix.shape[0] + 1, dtype=np.int64)
        np.cumsum(row_counts, out=indptr[1:])
        out = sp.csr_matrix((matrix.data[keep], target[keep], indptr), shape=(matrix.shape[0], len(self.output_genes)))
        if self.has_duplicates:
            out.sum_duplicates()
        return out


def project_genes(
    raw_ids: Sequence[str],
    mapping: GeneMapping | None = None,
    keep: Callable[[str], bool] | None = None,
    output_order: Iterable[str] | None = None,
) -> GeneProjection:
    """Normalise (and map) a file's gene IDs and index them into output genes.

    ``keep`` restricts the output to known genes (e.g. the vocabulary); ``output_order`` fixes the
    output genes and their order (anything not in it is dropped).
    """
    normalized = [normalize_gene_id(g) for g in raw_ids]
    if mapping is not None:
        normalized = [mapping.resolve(g, keep) for g in normalized]
    if output_order is not None:
        output_genes = list(output_order)
    else:
        output_genes = sorted({g for g in normalized if g is not None and (keep is None or keep(g))})
    position = {g: i for i, g in enumerate(output_genes)}
    column_to_output = np.fromiter((position.get(g, -1) if g is not None else -1 for g in normalized),
                                   dtype=np.int64, count=len(normalized))
    mapped = column_to_output[column_to_output >= 0]
    return GeneProjection(column_to_output, output_genes, has_duplicates=len(np.unique(mapped)) != len(mapped))
