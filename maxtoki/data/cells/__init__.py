"""Stage 1: a cell becomes tokens (reading inputs, gene medians, rank value encoding, cell shards)."""

from maxtoki.data.cells.encoding import EncodedCells, rank_value_encode
from maxtoki.data.cells.genes import GeneMapping, normalize_gene_id
from maxtoki.data.cells.medians import compute_medians, write_medians
from maxtoki.data.cells.sketch import MedianSketch
from maxtoki.data.cells.sources import ReadOptions, expand_inputs, open_source
from maxtoki.data.cells.tokenize import TokenizedCells, TokenizeOptions, load_medians, tokenize_anndata, tokenize_files

__all__ = [
    "EncodedCells", "GeneMapping", "MedianSketch", "ReadOptions", "TokenizeOptions", "TokenizedCells",
    "compute_medians", "expand_inputs", "load_medians", "normalize_gene_id", "open_source", "rank_value_encode",
    "tokenize_anndata", "tokenize_files", "write_medians",
]
