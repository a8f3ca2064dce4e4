"""Data: single-cell inputs become cell tokens (``cells/``), then cell paragraphs (``paragraphs/``), written and
read as MDS shards (``shards/``); ``loaders`` and ``packing`` feed training, ``simulate`` makes synthetic donors."""

from importlib import import_module

from maxtoki.data.cells import (
    EncodedCells,
    GeneMapping,
    ReadOptions,
    TokenizedCells,
    TokenizeOptions,
    compute_medians,
    load_medians,
    normalize_gene_id,
    rank_value_encode,
    tokenize_anndata,
    tokenize_files,
    write_medians,
)
from maxtoki.data.simulate import SimulationOptions, simulate

# Imported on first use, so that ``import maxtoki.data`` does not load stage 2.
_LAZY = {"CellStore": "maxtoki.data.paragraphs", "ParagraphOptions": "maxtoki.data.paragraphs",
         "build_paragraphs": "maxtoki.data.paragraphs"}

__all__ = [
    "CellStore", "EncodedCells", "GeneMapping", "ParagraphOptions", "ReadOptions", "SimulationOptions",
    "TokenizeOptions", "TokenizedCells", "build_paragraphs", "compute_medians", "load_medians", "normalize_gene_id",
    "rank_value_encode", "simulate", "tokenize_anndata", "tokenize_files", "write_medians",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)
