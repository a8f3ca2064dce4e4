"""Query assembly: ask an evaluation paragraph about a cell from another data set.

For each TimeBetweenCells evaluation paragraph, the query cell is replaced by a cell of another
tokenized data set (for example a disease donor) whose time lies within ``match_time_tolerance``
of the original query time (and that agrees on ``match_columns``, e.g. cell type); the context
stays, and the target timelapse is recomputed from the new cell's time. Comparing the model's
predictions on such prompts with those on control cells is the age-acceleration analysis.
"""

from __future__ import annotations

import tempfile
from collections import Counter

import numpy as np

from maxtoki.console import progress_bar
from maxtoki.data.paragraphs.blueprint import TIME_BETWEEN_CELLS
from maxtoki.data.paragraphs.build import paragraph_columns
from maxtoki.data.paragraphs.cell_store import CellStore, build_cell_index
from maxtoki.data.paragraphs.sampling import assemble, to_time_units
from maxtoki.data.shards.destination import ShardDestination
from maxtoki.data.shards.manifest import base_manifest
from maxtoki.data.shards.mds import mds_writer_class
from maxtoki.errors import MaxtokiError
from maxtoki.vocab import VOCAB_FILE


def build_queries(paragraphs: str, other_cells: str, out: str, *, match_time_tolerance: float = 0.0,
                  match_columns: tuple[str, ...] = (), where: tuple[tuple[str, str], ...] = (), seed: int = 0,
                  overwrite: bool = False) -> dict:
    """Write query paragraphs to ``out``; ``where`` restricts the new query cells (COLUMN, VALUE)."""
    cache = tempfile.mkdtemp(prefix="maxtoki-queries-")
    examples = CellStore(paragraphs, f"{cache}/paragraphs")
    manifest = examples.manifest
    if manifest.get("kind") != "maxtoki.paragraphs" or "prompt_ids" not in examples.columns:
        raise MaxtokiError(f"{paragraphs}: queries need evaluation paragraphs; make them with "
                           "`maxtoki data paragraphs ... --eval`")
    options = manifest["arguments"]
    vocab = examples.vocabulary()
    originals = CellStore(manifest["cells"]["location"], f"{cache}/cells")
    others = CellStore(other_cells, f"{cache}/other")
    if others.manifest.get("vocabulary", {}).get("sha256") != vocab.sha256:
        raise MaxtokiError(f"{other_cells}: tokenized with a different vocabulary than the paragraphs; tokenize "
                           f"it with {manifest['vocabulary']['path']}")
    other_index = build_cell_index(others)
    other_times = to_time_units(other_index.times, options["time_scale"])
    other_columns = others.column_values(list(dict.fromkeys([*match_columns, *(c for c, _ in where)])),
                                         "--match-columns/--where")
    other_keys = [other_columns[c] for c in match_columns]
    original_keys = list(originals.column_values(list(match_columns), "--match-columns").values())
    eligible = ~np.isnan(other_index.times)
    for column, value in where:
        eligible &= other_columns[column] == value
    tolerance = match_time_tolerance * options["time_scale"]
    rng = np.random.default_rng(seed)
    columns = {**paragraph_columns(vocab, True), "query_cell_index": "int64", "query_cell_id": "str",
               "query_dataset": "str", "query_time": "int64", "reference_timelapse": "int32"}
    counts, tokens = Counter(), 0
    destination = ShardDestination(out, overwrite).open()
    try:
        with mds_writer_class()(out=destination.part_out(0), columns=columns, keep_local=True) as writer, \
                progress_bar(len(examples), "queries", unit="paragraphs") as bar:
            for example in examples:
                bar.update(1)
                if example["task"] != TIME_BETWEEN_CELLS:
                    counts["skipped_next_cell"] += 1
                    continue
                cells, times = example["cell_indices"], example["times"]
                candidates = np.abs(other_times - times[-1]) <= tolerance
                for other, original in zip(other_keys, original_keys):
                    candidates &= other == original[cells[-1]]
                candidates = np.flatnonzero(candidates & eligible)
                if not len(candidates):
                    counts["skipped_no_match"] += 1
                    continue
                chosen = int(candidates[rng.integers(len(candidates))])
                query = others[chosen]
                new_times = np.concatenate([times[:-1], [other_times[chosen]]])
                context = [originals[int(c)]["input_ids"] for c in cells[:-1]]
                prompt, response, target = assemble(context + [query["input_ids"]], new_times, TIME_BETWEEN_CELLS,
                                                    vocab, options["max_seq_len"], options["clip"])
                writer.write({"prompt_ids": prompt, "response_ids": response, "prompt_length": len(prompt),
                              "task": TIME_BETWEEN_CELLS, "timelapse": target, "group": example["group"],
                              "cell_indices": cells, "times": new_times, "query_cell_index": chosen,
                              "query_cell_id": query["cell_id"], "query_dataset": query["dataset"],
                              "query_time": int(other_times[chosen]), "reference_timelapse": example["timelapse"]})
                counts["written"] += 1
                tokens += len(prompt) + len(response)
        result = base_manifest("maxtoki.queries", {"match_time_tolerance": match_time_tolerance,
                                                   "match_columns": list(match_columns),
                                                   "where": [f"{c}={v}" for c, v in where], "seed": seed})
        result.update({"paragraphs": paragraphs, "other_cells": other_cells, "counts": dict(counts),
                       "columns": columns, "tokens": tokens, "vocabulary": manifest["vocabulary"],
                       "cells": manifest["cells"],
                       "time_scale": options["time_scale"]})
        destination.commit([destination.part_index(0)], result, {VOCAB_FILE: vocab.to_json().encode()})
    except BaseException:
        destination.abort()
        raise
    if not counts["written"]:
        raise MaxtokiError(f"no query cell of {other_cells} matched any paragraph ({dict(counts)}); widen "
                           "--match-time-tolerance or check --match-columns")
    return result
