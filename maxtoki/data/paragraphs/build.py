"""``maxtoki data paragraphs``: from cell shards to paragraph shards, with splits and a blueprint.

Sampling happens once, in this process, into a blueprint; parts of the blueprint are then written
by worker processes, each reading the cells it needs from the cell shards on demand. The same
cells, options and seed therefore give byte-identical shards for any number of workers.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxtoki import storage
from maxtoki.data.paragraphs.blueprint import Blueprint
from maxtoki.data.paragraphs.cell_store import CellIndex, CellStore, build_cell_index
from maxtoki.data.paragraphs.sampling import ParagraphOptions, assemble, sample_blueprint, to_time_units
from maxtoki.data.paragraphs.splits import HOLDOUT, VALIDATION, assign_groups, examples_per_split
from maxtoki.data.shards.destination import ShardDestination, SplitOutputs
from maxtoki.data.shards.manifest import base_manifest
from maxtoki.data.shards.mds import mds_writer_class
from maxtoki.data.shards.parallel import run_parts
from maxtoki.errors import MaxtokiError
from maxtoki.vocab import VOCAB_FILE, Vocabulary, fitting_max_time

logger = logging.getLogger(__name__)

BLUEPRINT_NAME = "blueprint.npz"
SPLITS_NAME = "splits.json"
PART_EXAMPLES = 1024


def paragraph_columns(vocab: Vocabulary, eval_layout: bool) -> dict[str, str]:
    tokens = f"ndarray:{vocab.token_dtype.name}"
    layout = {"prompt_ids": tokens, "response_ids": tokens} if eval_layout else {"input_ids": tokens}
    return {**layout, "prompt_length": "int32", "task": "int8", "timelapse": "int32", "group": "str",
            "cell_indices": "ndarray:int64", "times": "ndarray:int64"}


@dataclass(frozen=True)
class _Part:
    cells: str
    cache_dir: str
    blueprint: Blueprint
    vocab: Vocabulary
    options: ParagraphOptions
    out: object
    columns: dict


def _write_part(part: _Part, report) -> dict:
    MDSWriter = mds_writer_class()
    store = CellStore(part.cells, part.cache_dir)
    blueprint, options = part.blueprint, part.options
    tokens = 0
    with MDSWriter(out=part.out, columns=part.columns, keep_local=True, size_limit=1 << 27) as writer:
        for i in range(len(blueprint)):
            cell_indices = blueprint.cells(i)
            cells = [store[int(c)]["input_ids"] for c in cell_indices]
            prompt, response, target = assemble(cells, blueprint.cell_times(i), int(blueprint.tasks[i]), part.vocab,
                                                options.max_seq_len, options.clip)
            sample = {"prompt_length": len(prompt), "task": int(blueprint.tasks[i]), "timelapse": target,
                      "group": blueprint.group_names[blueprint.groups[i]], "cell_indices": cell_indices,
                      "times": blueprint.cell_times(i)}
            if options.eval_layout:
                sample.update(prompt_ids=prompt, response_ids=response)
            else:
                sample["input_ids"] = np.concatenate([prompt, response])
            writer.write(sample)
            tokens += len(prompt) + len(response)
            report(1)
    return {"tokens": tokens}


def write_paragraph_shards(blueprint: Blueprint, cells: str, vocab: Vocabulary, options: ParagraphOptions,
                           out: str, *, overwrite: bool, workers: int, cache_dir: str, manifest_extra: dict) -> dict:
    columns = paragraph_columns(vocab, options.eval_layout)
    destination = ShardDestination(out, overwrite).open()
    try:
        ranges = [(lo, min(lo + PART_EXAMPLES, len(blueprint))) for lo in range(0, len(blueprint), PART_EXAMPLES)]
        parts = [_Part(cells, cache_dir, blueprint.select(lo, hi), vocab, options, destination.part_out(i), columns)
                 for i, (lo, hi) in enumerate(ranges)]
        tokens, part_indexes = 0, []
        for i, result in enumerate(run_parts(_write_part, parts, workers, len(blueprint), "paragraphs")):
            tokens += result["tokens"]
            part_indexes.append(destination.part_index(i))
            destination.release_part(i)
        manifest = base_manifest("maxtoki.paragraphs", options.as_dict())
        manifest.update(manifest_extra)
        manifest.update({"columns": columns, "tokens": tokens, "blueprint": "blueprint.npz"})
        destination.commit(part_indexes, manifest, {BLUEPRINT_NAME: blueprint.to_bytes(),
                                                     VOCAB_FILE: vocab.to_json().encode()})
    except BaseException:
        destination.abort()
        raise
    return manifest


def build_paragraphs(cells: str, vocab_path: str | None, out: str, options: ParagraphOptions = ParagraphOptions(),
                     *, group_columns: tuple[str, ...] = (), split: dict[str, float] | None = None,
                     holdout_groups: tuple[str, ...] = (), holdout_values: tuple[tuple[str, str], ...] = (),
                     holdout_fraction: float = 0.0, validation_fraction: float = 0.0,
                     blueprint_path: str | None = None, workers: int = 1, overwrite: bool = False) -> dict:
    """Sample (or rebuild from a blueprint) and write paragraph shards; returns manifests by split.

    Without ``vocab_path`` the vocabulary named in the cells' manifest is used. ``validation_fraction`` deals
    that share of the cells of every group and time that are not held out into a ``validation`` split (to
    calibrate or select on, apart from the held-out cells that score the model).
    """
    cache = tempfile.TemporaryDirectory(prefix="maxtoki-cells-")  # remote cells' shards; removed on return
    cache_dir = cache.name
    store = CellStore(cells, cache_dir)
    if vocab_path is None:
        vocab, vocab_path = store.vocabulary(), f"{cells}/{VOCAB_FILE}"
    else:
        vocab = Vocabulary.load(vocab_path)
    if store.manifest.get("vocabulary", {}).get("sha256") != vocab.sha256:
        raise MaxtokiError(f"{cells}: the cells were tokenized with a different vocabulary than {vocab_path} "
                           f"({store.manifest.get('vocabulary', {}).get('path')}); give that vocabulary")
    if "<boq>" not in vocab or "<eoq>" not in vocab or not vocab.is_numeric.any():
        raise MaxtokiError(f"{vocab_path}: paragraphs need <boq>, <eoq> and numeric time tokens; build the "
                           "vocabulary with `maxtoki data vocab`")
    location = cells if storage.is_remote(cells) else str(Path(cells).resolve())  # readable from any directory
    source = {"cells": {"location": location, "cells": len(store), "vocabulary_sha256": vocab.sha256,
                        "manifest_created": store.manifest.get("created")},
              "vocabulary": {"path": str(vocab_path), "sha256": vocab.sha256, "size": len(vocab)},
              "group_columns": list(group_columns)}
    write = dict(vocab=vocab, cells=cells, options=options, overwrite=overwrite, workers=workers,
                 cache_dir=cache_dir)
    if blueprint_path:
        if split or holdout_groups or holdout_values or holdout_fraction or validation_fraction:
            raise MaxtokiError("--blueprint rebuilds one output as it was; it does not take split options")
        blueprint = Blueprint.load(blueprint_path)
        if len(blueprint) and int(blueprint.cell_indices.max()) >= len(store):
            raise MaxtokiError(f"{blueprint_path}: refers to cells beyond the {len(store)} cells of {cells}")
        extra = {**source, "counts": {"examples": len(blueprint)}, "rebuilt_from": str(blueprint_path)}
        return {"all": write_paragraph_shards(blueprint, out=out, manifest_extra=extra, **write)}

    index = build_cell_index(store, group_columns)
    subsets = _subsets(index, store, split, holdout_groups, holdout_values, holdout_fraction, options.seed,
                       validation_fraction)
    if len(subsets) == 1 and "all" in subsets:
        blueprint, counts = sample_blueprint(index, subsets["all"][0], vocab, options,
                                             np.random.default_rng(options.seed))
        manifests = {"all": write_paragraph_shards(blueprint, out=out, manifest_extra={**source, "counts": counts},
                                                   **write)}
        warn_if_time_tokens_far_exceed(vocab, index, options.time_scale, vocab_path)
        return manifests
    weights = {name: (split or {}).get(name, 0) or len(subset) / len(index) for name, (subset, _) in subsets.items()}
    sizes = examples_per_split(options.num_examples, weights)
    seeds = np.random.SeedSequence(options.seed).spawn(len(subsets))
    parent = SplitOutputs(out, subsets, SPLITS_NAME, overwrite)
    write["overwrite"] = parent.open()
    manifests = {}
    for (name, (subset, groups)), seed in zip(subsets.items(), seeds):
        split_options = ParagraphOptions(**{**options.as_dict(), "num_examples": sizes[name]})
        blueprint, counts = sample_blueprint(index, subset, vocab, split_options, np.random.default_rng(seed), name)
        extra = {**source, "counts": counts, "split": name, "split_groups": groups}
        manifests[name] = write_paragraph_shards(blueprint, out=f"{str(out).rstrip('/')}/{name}", manifest_extra=extra,
                                                 **{**write, "options": split_options})
    parent.commit(_splits_file({name: groups for name, (_, groups) in subsets.items()}, split, holdout_groups,
                               holdout_values, holdout_fraction, options.seed, validation_fraction))
    warn_if_time_tokens_far_exceed(vocab, index, options.time_scale, vocab_path)
    return manifests


TIME_RANGE_SLACK = 4  # time tokens reaching past this many times the data's largest Δ get a notice


def warn_if_time_tokens_far_exceed(vocab: Vocabulary, index: CellIndex, time_scale: float, vocab_path) -> None:
    """A notice when the vocabulary's time tokens reach far past any Δ of these cells: the read-out spreads over
    times that never occur (±1,500 tokens for a course of 72 hours made a CPU-sized model predict a constant)."""
    times = index.times[~np.isnan(index.times)]
    largest = int(np.ptp(to_time_units(times, time_scale))) if len(times) else 0
    reach = vocab.time_range[1] + 1
    if largest and reach > TIME_RANGE_SLACK * largest:
        logger.warning(f"the time tokens of {vocab_path or 'the vocabulary'} reach ±{reach}, {reach / largest:.0f} x "
                       f"the largest Δ of these cells ({largest}): a model spreads its time read-out over times that "
                       f"never occur; build the vocabulary with `maxtoki data vocab --max-time "
                       f"{fitting_max_time(largest)}` (or give --time-scale)")


def _subsets(index: CellIndex, store: CellStore, split, holdout_groups, holdout_values, holdout_fraction: float,
             seed: int, validation_fraction: float = 0.0) -> dict:
    """Cells (indices) and group names of each split; held-out cells and groups form their own split, and so do
    the validation cells."""
    all_cells = np.arange(len(index))
    held = np.zeros(len(index), dtype=bool)
    unknown = [g for g in holdout_groups if g not in index.group_names]
    if unknown:
        raise MaxtokiError(f"--holdout-groups: no group {unknown[0]!r}; groups look like {index.group_names[:5]}")
    for group in holdout_groups:
        held |= index.group_codes == index.group_names.index(group)
    for column, value in holdout_values:
        held |= store.column_values([column], "--holdout-values")[column] == value
    if holdout_fraction:
        held |= _random_cells(index, holdout_fraction, [seed, 1])
    subsets = {}
    remaining = all_cells[~held]
    if validation_fraction:
        if split:
            raise MaxtokiError("--validation-fraction deals cells; with --split, name a validation split of whole "
                               "groups instead (e.g. train=0.8,val=0.1,test=0.1)")
        validation = np.flatnonzero(_random_cells(index, validation_fraction, [seed, 2], among=~held))
        if not len(validation):
            raise MaxtokiError(f"--validation-fraction {validation_fraction:g} takes no cell; give a larger share")
        remaining = np.setdiff1d(remaining, validation)
    if split:
        names = sorted({index.group_names[c] for c in index.group_codes[remaining]})
        assignment = assign_groups(names, split, seed)
        code_of = {name: code for code, name in enumerate(index.group_names)}
        for name, groups in assignment.items():
            if not groups:  # a split with fraction 0
                continue
            codes = np.array([code_of[g] for g in groups], dtype=np.int64)
            subsets[name] = (remaining[np.isin(index.group_codes[remaining], codes)], groups)
    else:
        subsets["all" if not (held.any() or validation_fraction) else "train"] = (
            remaining, sorted({index.group_names[c] for c in index.group_codes[remaining]}))
    if validation_fraction:
        subsets[VALIDATION] = (validation, sorted({index.group_names[c] for c in index.group_codes[validation]}))
    if held.any():
        subsets[HOLDOUT] = (all_cells[held], sorted({index.group_names[c] for c in index.group_codes[held]}))
    elif holdout_groups or holdout_values or holdout_fraction:
        raise MaxtokiError("the hold-out options match no cell")
    return subsets


def _random_cells(index: CellIndex, fraction: float, seed: list[int], among: np.ndarray | None = None
                  ) -> np.ndarray:
    """A seeded share of the cells (``among`` them) of every (group, time), so that one time course can still be
    split."""
    if not 0 < fraction < 1:
        raise MaxtokiError(f"--holdout-fraction/--validation-fraction {fraction:g}: give a fraction between 0 and 1")
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(index), dtype=bool)
    candidates = np.flatnonzero(np.ones(len(index), dtype=bool) if among is None else among)
    if not len(candidates):
        return chosen
    buckets = np.stack([index.group_codes[candidates].astype(np.float64), index.times[candidates]])
    _, bucket_of = np.unique(buckets, axis=1, return_inverse=True)
    for bucket in range(int(bucket_of.max()) + 1):
        members = candidates[bucket_of == bucket]
        chosen[rng.permutation(members)[:round(fraction * len(members))]] = True
    return chosen


def _splits_file(groups: dict[str, list[str]], split, holdout_groups, holdout_values, holdout_fraction: float,
                 seed, validation_fraction: float) -> bytes:
    return json.dumps({"seed": seed, "split": split, "holdout_groups": list(holdout_groups),
                       "holdout_values": [f"{c}={v}" for c, v in holdout_values],
                       "holdout_fraction": holdout_fraction, "validation_fraction": validation_fraction,
                       "groups": groups}, indent=2).encode()
