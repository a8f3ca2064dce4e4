"""Stage 2: the cells of one trajectory become cell paragraphs (sampling, splits, paragraph and query shards)."""

from maxtoki.data.paragraphs.blueprint import Blueprint
from maxtoki.data.paragraphs.build import build_paragraphs
from maxtoki.data.paragraphs.cell_store import CellStore
from maxtoki.data.paragraphs.queries import build_queries
from maxtoki.data.paragraphs.sampling import ParagraphOptions
from maxtoki.data.paragraphs.splits import parse_holdout_values, parse_split

__all__ = [
    "Blueprint", "CellStore", "ParagraphOptions", "build_paragraphs", "build_queries", "parse_holdout_values",
    "parse_split",
]
