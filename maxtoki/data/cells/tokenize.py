"""Stage-1 data: cells -> rank-value-encoded token sequences, in memory or as MDS shards.

``tokenize_anndata`` is the notebook entry (AnnData in, token arrays out); ``tokenize_files`` is
what ``maxtoki data tokenize`` runs: inputs are split into parts that worker processes write as
MDS sub-directories, merged into one index at the end, with a manifest that accounts for every
input cell.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from maxtoki.data.cells.chunks import CellChunk, ChunkReader, chunk_ranges, plan_parts
from maxtoki.data.cells.encoding import EncodedCells, rank_value_encode
from maxtoki.data.cells.genes import GeneMapping, GeneProjection, normalize_gene_id, project_genes
from maxtoki.data.cells.sources import AnnDataSource, CellSource, ReadOptions, expand_inputs, open_source
from maxtoki.data.shards.destination import ShardDestination
from maxtoki.data.shards.manifest import base_manifest, file_sha256
from maxtoki.data.shards.mds import mds_writer_class
from maxtoki.data.shards.parallel import run_parts
from maxtoki.errors import InputFileError, MaxtokiError
from maxtoki.vocab import VOCAB_FILE, Vocabulary

KEPT = "kept"
RESERVED_COLUMNS = ("input_ids", "length", "cell_id", "dataset", "time", "group")
GROUP_SEPARATOR = "|"
PART_CELLS = 16_384  # cells per part: the unit of parallel work and of output sub-directories


@dataclass(frozen=True)
class TokenizeOptions:
    read: ReadOptions = ReadOptions()
    time_column: str | None = None
    group_columns: tuple[str, ...] = ()
    keep_obs: tuple[str, ...] = ()
    model_input_size: int = 4096
    allow_non_integer: bool = False
    chunk_size: int = 2048
    min_expression: float = 0.0

    def __post_init__(self):
        if self.model_input_size < 3:
            raise MaxtokiError("--model-input-size must be at least 3 (<bos>, one gene, <eos>)")
        if self.chunk_size < 1:
            raise MaxtokiError("--chunk-size must be positive")
        clash = [c for c in self.keep_obs if c in RESERVED_COLUMNS]
        if clash:
            raise MaxtokiError(f"--keep-obs {clash[0]!r} clashes with a built-in column "
                               f"({', '.join(RESERVED_COLUMNS)}); rename the obs column first")

    @property
    def obs_needed(self) -> list[str]:
        return [c for c in (self.time_column, *self.group_columns, *self.keep_obs) if c]


def load_medians(path: str | Path) -> dict[str, float]:
    """A gene-median JSON (Ensembl ID -> positive float), keys normalised like input gene IDs."""
    path = Path(path)
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputFileError(path, f"cannot read the medians ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(path, f"not a JSON file of gene medians ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise InputFileError(path, "gene medians must be a non-empty JSON object: Ensembl ID -> median")
    medians = {}
    for gene, value in raw.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise InputFileError(path, f"the median of {gene!r} is {value!r}; medians must be positive numbers")
        medians.setdefault(normalize_gene_id(gene), float(value))
    return medians


class CellEncoder:
    """Vocabulary + medians (+ symbol mapping) bound together: encodes chunks of any source."""

    def __init__(self, vocab: Vocabulary, medians: dict[str, float], options: TokenizeOptions,
                 mapping: GeneMapping | None = None):
        self.vocab, self.options, self.mapping = vocab, options, mapping
        pairs = [(int(tid), gene) for tid, gene in zip(vocab.gene_ids, vocab.genes) if gene in medians]
        if not pairs:
            raise MaxtokiError("no gene of the vocabulary has a median; were the vocabulary and the medians "
                               "made from the same corpus?")
        self.token_ids = np.array([tid for tid, _ in pairs], dtype=np.int64)
        self.genes = [gene for _, gene in pairs]
        self.medians = np.array([medians[gene] for gene in self.genes], dtype=np.float64)
        self._known = frozenset(self.genes)

    def projection(self, source: CellSource) -> GeneProjection:
        raw_ids = source.gene_ids()
        projection = project_genes(raw_ids, self.mapping, keep=self._known.__contains__, output_order=self.genes)
        if projection.n_mapped_columns == 0:
            hint = ("--gene-mapping does not map them either" if self.mapping else
                    "if they are gene symbols, give --gene-mapping (symbol -> Ensembl CSV); otherwise choose "
                    "the column with --gene-id-column")
            raise InputFileError(source.path, f"none of its {len(raw_ids)} gene IDs is in the vocabulary (file: "
                                              f"{raw_ids[:3]}; vocabulary: {self.genes[:3]}); {hint}")
        return projection

    def encode(self, chunk: CellChunk, times: np.ndarray | None = None) -> tuple[EncodedCells, np.ndarray]:
        """Tokens of every cell of the chunk and why each cell is dropped (or ``kept``).

        Reasons, first match wins: ``filter_pass``, ``zero_counts``, ``missing_time``,
        ``no_vocabulary_gene``.
        """
        encoded = rank_value_encode(chunk.matrix, chunk.n_counts, self.token_ids, self.medians,
                                    self.options.model_input_size, self.vocab.bos_id, self.vocab.eos_id,
                                    self.vocab.token_dtype)
        reasons = np.full(chunk.end - chunk.start, KEPT, dtype=object)
        reasons[encoded.lengths == 0] = "no_vocabulary_gene"
        if times is not None:
            reasons[np.isnan(times)] = "missing_time"
        reasons[~(chunk.n_counts > 0)] = "zero_counts"
        reasons[~chunk.passes_filter] = "filter_pass"
        return encoded, reasons


def chunk_metadata(source: CellSource, options: TokenizeOptions, start: int, end: int) -> dict[str, np.ndarray]:
    """Per-cell columns stored beside the tokens: cell_id, time, group and kept obs columns."""
    meta = {"cell_id": source.cell_ids(start, end)}
    if options.time_column:
        meta["time"] = source.numeric_obs(options.time_column, start, end)
    if options.group_columns:
        parts = [source.obs_column(c, start, end).astype(str) for c in options.group_columns]
        meta["group"] = np.array([GROUP_SEPARATOR.join(values) for values in zip(*parts)], dtype=object)
    for column in options.keep_obs:
        meta[column] = source.obs_column(column, start, end).astype(str)
    return meta


# ----- in memory ------------------------------------------------------------------------------
@dataclass
class TokenizedCells:
    """Token arrays of the kept cells with their metadata (``obs`` is indexed by cell id)."""

    input_ids: list[np.ndarray]
    obs: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_anndata(adata, vocab: Vocabulary | str | Path, medians: dict[str, float] | str | Path, *,
                     gene_id_column: str | None = None, gene_mapping: GeneMapping | str | Path | None = None,
                     layer: str | None = None, use_raw: bool = False, time_column: str | None = None,
                     group_columns=(), keep_obs=(), model_input_size: int = 4096,
                     allow_non_integer: bool = False, min_expression: float = 0.0,
                     chunk_size: int = 2048) -> TokenizedCells:
    """Rank-value-encode an AnnData object (scanpy style: AnnData in, token arrays out)."""
    vocab = vocab if isinstance(vocab, Vocabulary) else Vocabulary.load(vocab)
    medians = medians if isinstance(medians, dict) else load_medians(medians)
    if gene_mapping is not None and not isinstance(gene_mapping, GeneMapping):
        gene_mapping = GeneMapping.from_csv(gene_mapping)
    options = TokenizeOptions(ReadOptions(gene_id_column, layer, use_raw), time_column, tuple(group_columns),
                              tuple(keep_obs), model_input_size, allow_non_integer, chunk_size, min_expression)
    source = AnnDataSource(adata, options.read)
    source.require_obs_columns(options.obs_needed, "obs")
    encoder = CellEncoder(vocab, medians, options, gene_mapping)
    reader = ChunkReader(source, encoder.projection(source), allow_non_integer, min_expression)
    input_ids, frames, dropped = [], [], Counter()
    for lo, hi in chunk_ranges(0, source.n_cells, chunk_size):
        meta = chunk_metadata(source, options, lo, hi)
        encoded, reasons = encoder.encode(reader.read(lo, hi), meta.get("time"))
        kept = np.flatnonzero(reasons == KEPT)
        dropped.update(reasons[reasons != KEPT])
        input_ids.extend(encoded[i].copy() for i in kept)
        frames.append(pd.DataFrame({k: v[kept] for k, v in meta.items()}).assign(length=encoded.lengths[kept]))
    obs = pd.concat(frames, ignore_index=True).set_index("cell_id") if frames else pd.DataFrame()
    return TokenizedCells(input_ids, obs, dict(dropped))


# ----- files -> MDS shards --------------------------------------------------------------------
@dataclass(frozen=True)
class _PartTask:
    path: str
    start: int
    end: int
    out: object
    encoder: CellEncoder
    columns: dict
    compression: str | None


def shard_columns(vocab: Vocabulary, options: TokenizeOptions) -> dict[str, str]:
    columns = {"input_ids": f"ndarray:{vocab.token_dtype.name}", "length": "int32", "cell_id": "str",
               "dataset": "str"}
    if options.time_column:
        columns["time"] = "float64"
    if options.group_columns:
        columns["group"] = "str"
    columns.update({c: "str" for c in options.keep_obs})
    return columns


def _write_part(task: _PartTask, report) -> dict:
    """Encode one part of one input into its own MDS directory; returns its cell accounting."""
    MDSWriter = mds_writer_class()
    encoder, options = task.encoder, task.encoder.options
    dropped, written, tokens = Counter(), 0, 0
    with open_source(task.path, options.read) as source:
        reader = ChunkReader(source, encoder.projection(source), options.allow_non_integer, options.min_expression)
        with MDSWriter(out=task.out, columns=task.columns, compression=task.compression, keep_local=True,
                       size_limit=1 << 27) as writer:
            for lo, hi in chunk_ranges(task.start, task.end, options.chunk_size):
                meta = chunk_metadata(source, options, lo, hi)
                encoded, reasons = encoder.encode(reader.read(lo, hi), meta.get("time"))
                dropped.update(reasons[reasons != KEPT])
                for i in np.flatnonzero(reasons == KEPT):
                    ids = encoded[i]
                    sample = {"input_ids": ids, "length": len(ids), "dataset": source.dataset}
                    sample.update({name: values[i] for name, values in meta.items()})
                    writer.write(sample)
                    written += 1
                    tokens += len(ids)
                report(hi - lo)
    return {"written": written, "tokens": tokens, "dropped": dict(dropped)}


def tokenize_files(inputs, vocab_path: str | Path, medians_path: str | Path, out: str, *,
                   options: TokenizeOptions = TokenizeOptions(), gene_mapping_path: str | Path | None = None,
                   workers: int = 1, overwrite: bool = False, compression: str | None = None) -> dict:
    """Tokenize .h5ad/.h5 files (or directories of them) into MDS shards at ``out``; returns the manifest."""
    files = expand_inputs(inputs)
    vocab = Vocabulary.load(vocab_path)
    mapping = GeneMapping.from_csv(gene_mapping_path) if gene_mapping_path else None
    encoder = CellEncoder(vocab, load_medians(medians_path), options, mapping)
    cell_counts = []
    for path in files:  # check every input before anything is written
        with open_source(path, options.read) as source:
            source.require_obs_columns(options.obs_needed, "obs")
            encoder.projection(source)
            cell_counts.append(source.n_cells)
    parts = plan_parts(cell_counts, PART_CELLS)
    columns = shard_columns(vocab, options)
    destination = ShardDestination(out, overwrite).open()
    try:
        tasks = [_PartTask(str(files[f]), lo, hi, destination.part_out(i), encoder, columns, compression)
                 for i, (f, lo, hi) in enumerate(parts)]
        results, part_indexes = [], []
        for i, result in enumerate(run_parts(_write_part, tasks, workers, sum(cell_counts), "tokenize")):
            results.append(result)
            part_indexes.append(destination.part_index(i))
            destination.release_part(i)
        manifest = _manifest(files, cell_counts, parts, results, vocab, vocab_path, medians_path,
                             gene_mapping_path, options, columns, workers, compression)
        destination.commit(part_indexes, manifest, {VOCAB_FILE: vocab.to_json().encode()})
    except BaseException:
        destination.abort()
        raise
    return manifest


def _manifest(files, cell_counts, parts, results, vocab, vocab_path, medians_path, mapping_path, options,
              columns, workers, compression) -> dict:
    per_input = [{"path": os.path.abspath(path), "dataset": path.stem, "bytes": path.stat().st_size, "cells": n,
                  "written": 0, "tokens": 0, "dropped": Counter()} for path, n in zip(files, cell_counts)]
    for (f, _, _), result in zip(parts, results):
        per_input[f]["written"] += result["written"]
        per_input[f]["tokens"] += result["tokens"]
        per_input[f]["dropped"].update(result["dropped"])
    dropped = Counter()
    for entry in per_input:
        dropped.update(entry["dropped"])
        entry["dropped"] = dict(sorted(entry["dropped"].items()))
    manifest = base_manifest("maxtoki.cells", {
        "gene_id_column": options.read.gene_id_column, "layer": options.read.layer, "use_raw": options.read.use_raw,
        "time_column": options.time_column, "group_columns": list(options.group_columns),
        "group_separator": GROUP_SEPARATOR, "keep_obs": list(options.keep_obs),
        "model_input_size": options.model_input_size, "allow_non_integer": options.allow_non_integer,
        "min_expression": options.min_expression,
        "chunk_size": options.chunk_size, "workers": workers, "compression": compression,
    })
    manifest.update({
        "inputs": per_input,
        "vocabulary": {"path": os.path.abspath(vocab_path), "sha256": vocab.sha256, "size": len(vocab)},
        "medians": {"path": os.path.abspath(medians_path), "sha256": file_sha256(medians_path)},
        "gene_mapping": ({"path": os.path.abspath(mapping_path), "sha256": file_sha256(mapping_path)}
                         if mapping_path else None),
        "columns": columns,
        "cells": {"read": sum(cell_counts), "written": sum(e["written"] for e in per_input),
                  "dropped": dict(sorted(dropped.items()))},
        "tokens": sum(e["tokens"] for e in per_input),
    })
    return manifest

