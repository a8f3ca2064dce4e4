"""Data: reading and validating single-cell inputs, gene medians, rank value encoding, shards."""

from maxtoki.data.encoding import EncodedCells, rank_value_encode
from maxtoki.data.genes import GeneMapping, normalize_gene_id
from maxtoki.data.medians import compute_medians, write_medians
from maxtoki.data.sources import ReadOptions
from maxtoki.data.tokenize import TokenizedCells, TokenizeOptions, load_medians, tokenize_anndata, tokenize_files

__all__ = [
    "EncodedCells", "GeneMapping", "ReadOptions", "TokenizeOptions", "TokenizedCells", "compute_medians",
    "load_medians", "normalize_gene_id", "rank_value_encode", "tokenize_anndata", "tokenize_files",
    "write_medians",
]
