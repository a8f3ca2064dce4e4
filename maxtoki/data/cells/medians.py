"""Corpus-wide gene medians: the median of each gene's non-zero normalized expression.

Normalized expression is count / n_counts * 10,000. Files are read in chunks, parts run in worker
processes, and each part returns a ``MedianSketch`` that merges exactly, so memory is bounded by
the chunk size and the number of genes, never by the number of cells.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxtoki.data.cells.chunks import CellChunk, ChunkReader, chunk_ranges, plan_parts
from maxtoki.data.cells.encoding import TARGET_SUM
from maxtoki.data.cells.genes import GeneMapping, project_genes
from maxtoki.data.cells.sketch import MedianSketch
from maxtoki.data.cells.sources import ReadOptions, expand_inputs, open_source
from maxtoki.data.shards.parallel import run_parts

PART_CELLS = 16_384


@dataclass(frozen=True)
class _MedianTask:
    path: str
    start: int
    end: int
    read: ReadOptions
    mapping: GeneMapping | None
    allow_non_integer: bool
    min_expression: float
    chunk_size: int


def _median_part(task: _MedianTask, report) -> tuple[MedianSketch, int]:
    """Sketch of one part of one input, and how many of its cells counted."""
    sketch, used = MedianSketch(), 0
    with open_source(task.path, task.read) as source:
        projection = project_genes(source.gene_ids(), task.mapping)
        reader = ChunkReader(source, projection, task.allow_non_integer, task.min_expression)
        for lo, hi in chunk_ranges(task.start, task.end, task.chunk_size):
            used += _add_chunk(sketch, reader.read(lo, hi), projection.output_genes)
            report(hi - lo)
    sketch.state()
    return sketch, used


def _add_chunk(sketch: MedianSketch, chunk: CellChunk, genes: list[str]) -> int:
    """Add the normalized non-zero values of a chunk's usable cells; returns how many cells."""
    good = chunk.passes_filter & (chunk.n_counts > 0)
    matrix = chunk.matrix if good.all() else chunk.matrix[np.flatnonzero(good)]
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    values = matrix.data.astype(np.float64) / chunk.n_counts[good][rows] * TARGET_SUM
    sketch.add(genes, matrix.indices, values)
    return int(good.sum())


def compute_medians(inputs, *, read: ReadOptions = ReadOptions(), gene_mapping_path: str | Path | None = None,
                    allow_non_integer: bool = False, min_expression: float = 0.0, workers: int = 1,
                    chunk_size: int = 2048) -> tuple[dict[str, float], dict]:
    """Medians of every gene expressed in the inputs, and a summary of what was counted."""
    files = expand_inputs(inputs)
    mapping = GeneMapping.from_csv(gene_mapping_path) if gene_mapping_path else None
    cell_counts = []
    for path in files:  # check every input before the long part starts
        with open_source(path, read) as source:
            project_genes(source.gene_ids(), mapping)
            cell_counts.append(source.n_cells)
    tasks = [_MedianTask(str(files[f]), lo, hi, read, mapping, allow_non_integer, min_expression, chunk_size)
             for f, lo, hi in plan_parts(cell_counts, PART_CELLS)]
    total, used = MedianSketch(), 0
    for sketch, cells in run_parts(_median_part, tasks, workers, sum(cell_counts), "medians"):
        total.merge(sketch)
        used += cells
    medians = dict(sorted(total.medians().items()))
    summary = {"files": [str(f) for f in files], "cells_read": sum(cell_counts), "cells_used": used,
               "genes": len(medians)}
    return medians, summary


def write_medians(medians: dict[str, float], out: str | Path) -> None:
    """Write atomically: a crash never leaves a truncated medians file behind."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(medians, indent=0) + "\n")
    tmp.replace(out)
