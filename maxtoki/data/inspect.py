"""A readable summary of a cell-shard directory: what was written, dropped, and what cells look like."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from maxtoki import storage
from maxtoki.data.mds import streaming_dataset_class
from maxtoki.errors import MaxtokiError
from maxtoki.vocab import Vocabulary


def open_cells(path: str, cache_dir: str | None = None):
    """A ``StreamingDataset`` over local or ``s3://`` cell shards, in stored order."""
    StreamingDataset = streaming_dataset_class()
    if storage.is_remote(path):
        local = cache_dir or tempfile.mkdtemp(prefix="maxtoki-cells-")
        return StreamingDataset(remote=path, local=local, shuffle=False, batch_size=1)
    return StreamingDataset(local=str(path), shuffle=False, batch_size=1)


def read_manifest(path: str) -> dict:
    try:
        raw = storage.download_bytes(f"{path.rstrip('/')}/manifest.json") if storage.is_remote(path) else \
            (Path(path) / "manifest.json").read_bytes()
    except FileNotFoundError:
        raise MaxtokiError(f"{path}: no manifest.json; not a finished maxtoki output") from None
    return json.loads(raw)


def describe_shards(path: str, vocab_path: str | None = None, n_examples: int = 3) -> str:
    manifest = read_manifest(path)
    cells = manifest["cells"]
    lines = [f"cell shards at {path}",
             f"  cells: {cells['written']:,} written of {cells['read']:,} read; dropped: "
             f"{', '.join(f'{n:,} {r}' for r, n in cells['dropped'].items()) or 'none'}",
             f"  tokens: {manifest['tokens']:,}; columns: {', '.join(manifest['columns'])}"]
    for entry in manifest["inputs"]:
        lines.append(f"  input {entry['path']}: {entry['written']:,}/{entry['cells']:,} cells")
    dataset = open_cells(path)
    lengths = np.array([dataset[i]["length"] for i in range(len(dataset))])
    if len(lengths):
        lines.append(f"  tokens per cell (with <bos>/<eos>): min {lengths.min()}, median {int(np.median(lengths))}, "
                     f"max {lengths.max()}")
    if "time" in manifest["columns"] and len(dataset):
        times, counts = np.unique([dataset[i]["time"] for i in range(len(dataset))], return_counts=True)
        lines.append("  cells per time: " + ", ".join(f"{t:g}: {c}" for t, c in zip(times, counts)))
    vocab_file = vocab_path or manifest["vocabulary"]["path"]
    vocab = Vocabulary.load(vocab_file) if Path(vocab_file).exists() else None
    for i in range(min(n_examples, len(dataset))):
        sample = dataset[i]
        ids = sample["input_ids"]
        shown = vocab.decode(ids[:8]) if vocab else [str(t) for t in ids[:8]]
        lines.append(f"  cell {sample['cell_id']}: {len(ids)} tokens: {' '.join(shown)} ...")
    return "\n".join(lines)
