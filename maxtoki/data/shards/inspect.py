"""A readable summary of a cell-shard directory: what was written, dropped, and what cells look like."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from maxtoki import storage
from maxtoki.errors import MaxtokiError
from maxtoki.vocab import Vocabulary


def read_manifest(path: str) -> dict:
    try:
        raw = storage.download_bytes(f"{path.rstrip('/')}/manifest.json") if storage.is_remote(path) else \
            (Path(path) / "manifest.json").read_bytes()
    except FileNotFoundError:
        raise MaxtokiError(f"{path}: no manifest.json; not a finished maxtoki output") from None
    return json.loads(raw)


def describe_shards(path: str, vocab_path: str | None = None, n_examples: int = 3) -> str:
    """Summary of cell shards or paragraph shards (chosen by the manifest's kind)."""
    from maxtoki.data.paragraphs.cell_store import CellStore  # shards/ sits below the stages that read through it

    manifest = read_manifest(path)
    vocab_file = vocab_path or manifest.get("vocabulary", {}).get("path")
    vocab = Vocabulary.load(vocab_file) if vocab_file and Path(vocab_file).exists() else None
    store = CellStore(path)
    if manifest.get("kind") == "maxtoki.cells":
        return _describe_cells(path, manifest, store, vocab, n_examples)
    return _describe_paragraphs(path, manifest, store, vocab, n_examples)


def _describe_cells(path, manifest, store, vocab, n_examples) -> str:
    cells = manifest["cells"]
    lines = [f"cell shards at {path}",
             f"  cells: {cells['written']:,} written of {cells['read']:,} read; dropped: "
             f"{', '.join(f'{n:,} {r}' for r, n in cells['dropped'].items()) or 'none'}",
             f"  tokens: {manifest['tokens']:,}; columns: {', '.join(manifest['columns'])}"]
    for entry in manifest["inputs"]:
        lines.append(f"  input {entry['path']}: {entry['written']:,}/{entry['cells']:,} cells")
    samples = list(store)
    if samples:
        lengths = np.array([s["length"] for s in samples])
        lines.append(f"  tokens per cell (with <bos>/<eos>): min {lengths.min()}, median {int(np.median(lengths))}, "
                     f"max {lengths.max()}")
    if "time" in manifest["columns"] and samples:
        times, counts = np.unique([s["time"] for s in samples], return_counts=True)
        shown = ", ".join(f"{t:g}: {c}" for t, c in list(zip(times, counts))[:12])
        lines.append(f"  cells per time: {shown}{' ...' if len(times) > 12 else ''}")
    for sample in samples[:n_examples]:
        ids = sample["input_ids"]
        shown = vocab.decode(ids[:8]) if vocab else [str(t) for t in ids[:8]]
        lines.append(f"  cell {sample['cell_id']}: {len(ids)} tokens: {' '.join(shown)} ...")
    return "\n".join(lines)


def _describe_paragraphs(path, manifest, store, vocab, n_examples) -> str:
    from maxtoki.data.paragraphs.blueprint import TASK_NAMES

    counts = manifest.get("counts", {})
    lines = [f"{manifest.get('kind', 'maxtoki.paragraphs').split('.')[-1]} shards at {path}",
             f"  examples: {len(store):,}; tokens: {manifest.get('tokens', 0):,}; columns: "
             f"{', '.join(manifest['columns'])}"]
    if "tasks" in counts:
        lines.append(f"  tasks: {counts['tasks']}; groups used: {counts.get('groups_used')}; "
                     f"skipped: {counts.get('skipped') or 'nothing'}")
    for example in list(itertools.islice(store, n_examples)):
        ids = example["input_ids"] if "input_ids" in example else np.concatenate(
            [example["prompt_ids"], example["response_ids"]])
        task = TASK_NAMES[int(example["task"])]
        lines.append(f"  {task} in {example['group']}: times {example['times'].tolist()}, timelapse "
                     f"{example['timelapse']}, {len(ids)} tokens ({example['prompt_length']} in the prompt)")
        if vocab is not None:
            lines.append(f"    layout: {_layout(ids, vocab)}")
    return "\n".join(lines)


def _layout(ids: np.ndarray, vocab: Vocabulary) -> str:
    """A paragraph with every cell collapsed to [cell: N genes] and the other tokens spelled out."""
    parts, genes = [], 0
    for token in vocab.decode(ids):
        if vocab.is_gene[vocab[token]]:
            genes += 1
            continue
        if token == "<eos>":
            parts.append(f"[cell: {genes} genes]")
            genes = 0
        elif token != "<bos>":
            parts.append(token)
    return " ".join(parts)
