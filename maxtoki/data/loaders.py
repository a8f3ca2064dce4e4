"""Training data loaders: ``StreamingDataset`` over cell or paragraph shards, local or ``s3://``.

Batches are padded to the longest sequence in the batch (right padding with ``<pad>``), with an
attention mask; paragraph batches also carry ``prompt_length``, ``task`` and ``timelapse`` so the
loss masks come from the data. ``StreamingDataLoader`` lets Composer checkpoint the loader's
position, so a resumed run continues with exactly the samples it would have seen.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os

import numpy as np
import torch

from maxtoki import storage
from maxtoki.data.packing import PackingCollator
from maxtoki.errors import MaxtokiError

DATASET_KEYS = ("remote", "vocab", "max_seq_len", "packing_ratio")  # a loader's own; the others go to streaming
CELL_KEYS = ("input_ids",)
PARAGRAPH_KEYS = ("input_ids", "prompt_length", "task", "timelapse")


def read_data_manifest(location: str) -> dict:
    """The manifest of a maxtoki output, with a clear error if the location is not one."""
    try:
        if storage.is_remote(location):
            return json.loads(storage.download_bytes(f"{location.rstrip('/')}/manifest.json"))
        with open(os.path.join(location, "manifest.json")) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise MaxtokiError(f"{location}: no such data (no manifest.json); give the output of `maxtoki data "
                           "tokenize` or `maxtoki data paragraphs`") from None
    except MaxtokiError as exc:
        raise MaxtokiError(f"{location}: cannot read the data ({exc})") from None


def streaming_cache(remote: str, manifest: dict, owner: str) -> str:
    """The local cache of one loader of one run: ``owner`` names both (e.g. save folder and loader key).

    Streaming refuses two live datasets on one cache, so a train and an eval loader reading the same data,
    or two runs on one node, each need their own; the ranks of a node derive the same name, as streaming
    requires. The manifest (with its creation time) is part of the name: data rewritten at the same
    location never meets shards cached from its earlier version, while a resumed run finds its cache again.
    """
    key = json.dumps([remote, manifest, owner], sort_keys=True)
    return os.path.join(storage.local_cache_root(), "streaming", hashlib.sha256(key.encode()).hexdigest()[:16])


_datasets_built = itertools.count()


def _process_cache(remote: str, manifest: dict) -> str:
    """For a loader built outside a recipe (one process): a cache no other dataset of any process uses."""
    return streaming_cache(remote, manifest, f"process {os.getpid()} dataset {next(_datasets_built)}")


class TrainingDataUnreachable(MaxtokiError):
    """A shard of remote data could not be downloaded: the object store was gone for longer than the downloads
    retry. Raised in a DataLoader worker, it reaches the main process as this type with the worker's traceback
    as its text, whose last line is the message."""

    def __init__(self, message: str):
        if message.startswith("Caught "):
            message = message.rstrip().splitlines()[-1].split(": ", 1)[1]
        super().__init__(message)


_CONNECTION_ERRORS = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError")


def _streaming_dataset(location: str, manifest: dict, keys: tuple[str, ...], max_seq_len: int, **kwargs):
    from streaming import StreamingDataset
    from streaming.base.dataset import _ShardState

    class _Dataset(StreamingDataset):
        """Streaming, except that a failed download stops the epoch with its error instead of ending it early
        (streaming's background thread only sets an event, and a new worker would then wait forever for the
        shard it left half-prepared)."""

        def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
            try:
                super().prepare_shard(shard_id, blocking)
            except Exception as exc:
                self._shard_states[shard_id] = _ShardState.REMOTE
                if type(exc).__name__ in _CONNECTION_ERRORS:
                    raise TrainingDataUnreachable(f"{location}: {exc}") from exc
                raise

        def on_exception(self, future) -> None:
            if not future.cancelled() and future.exception() is not None:
                self._failure = future.exception()
                self._event.set()

        def __iter__(self):
            try:
                yield from super().__iter__()
            except RuntimeError:
                if getattr(self, "_failure", None) is None:
                    raise
            if getattr(self, "_failure", None) is not None:
                raise self._failure

        def __getitem__(self, index):
            sample = super().__getitem__(index)
            out = {key: sample[key] for key in keys}
            if len(out["input_ids"]) > max_seq_len:
                raise MaxtokiError(f"{location}: a sample of {len(out['input_ids'])} tokens exceeds max_seq_len "
                                   f"{max_seq_len}")
            return out

    if storage.is_remote(location):
        kwargs = {"remote": location, "local": kwargs.pop("local", None) or _process_cache(location, manifest),
                  **kwargs}
    else:
        kwargs = {"local": location, **kwargs}
    return registered(lambda: _Dataset(**kwargs))


PREFIX_ATTEMPTS = 5


def registered(make):
    """``make()`` again where another run on this machine took the same shared-memory prefix at the same moment.

    Streaming names each dataset's shared memory by the first free prefix, looked up and then created in two
    steps: two trainings starting together can both find the same one, and the second's create fails with
    FileExistsError. Made again, it finds the next one. Only in a run of one process: the ranks of a distributed
    run agree on their prefix through barriers that a retry on one rank would put out of step."""
    import random
    import time

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1  # Composer starts a group of one for a single process
    for attempt in itertools.count(1):
        try:
            return make()
        except FileExistsError:
            if distributed or attempt == PREFIX_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.05, 0.25))


class PadCollator:
    """Pads ``input_ids`` to the longest sample of the batch; passes scalar fields through as tensors."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict:
        longest = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((len(samples), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
        for row, sample in enumerate(samples):
            ids = torch.from_numpy(np.asarray(sample["input_ids"], dtype=np.int64))
            input_ids[row, :len(ids)] = ids
            attention_mask[row, :len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        for key in samples[0]:
            if key != "input_ids":
                batch[key] = torch.tensor([int(s[key]) for s in samples], dtype=torch.long)
        return batch


def build_loader(kind: str, dataset: dict, device_batch_size: int, tokenizer=None, drop_last: bool = True,
                 num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int | None = None,
                 persistent_workers: bool = False, timeout: float = 0):
    """A Composer ``DataSpec`` over ``dataset.remote`` (cells or paragraphs, checked against the vocab)."""
    from composer.core import DataSpec
    from streaming import StreamingDataLoader

    from maxtoki.vocab import Vocabulary

    dataset = dict(dataset)
    location = str(dataset.pop("remote"))
    vocab_path = dataset.pop("vocab")
    max_seq_len = int(dataset.pop("max_seq_len"))
    packing_ratio = dataset.pop("packing_ratio", None)
    manifest = read_data_manifest(location)
    expected = {"cells": "maxtoki.cells", "paragraphs": "maxtoki.paragraphs"}[kind]
    if manifest.get("kind") != expected:
        raise MaxtokiError(f"{location}: holds {manifest.get('kind')} data, but this loader reads {expected} "
                           f"({'stage 1' if kind == 'cells' else 'stage 2'})")
    vocab = Vocabulary.load(vocab_path)
    if manifest["vocabulary"]["sha256"] != vocab.sha256:
        raise MaxtokiError(f"{location}: the data was made with another vocabulary ({manifest['vocabulary']['path']}) "
                           f"than the model's ({vocab_path})")
    if kind == "paragraphs" and "input_ids" not in manifest["columns"]:
        raise MaxtokiError(f"{location}: evaluation-layout paragraphs (--eval) are for inference; train on "
                           "paragraphs made without --eval")
    keys = CELL_KEYS if kind == "cells" else PARAGRAPH_KEYS
    cells_per_batch, collate = device_batch_size, PadCollator(vocab.pad_id)
    if packing_ratio is not None:
        if kind != "cells":
            raise MaxtokiError("dataset.packing_ratio: packing is for stage 1 (cells); paragraphs fill their context "
                               "already")
        ratio = resolve_packing_ratio(packing_ratio, manifest, max_seq_len)
        cells_per_batch = max(device_batch_size, round(ratio * device_batch_size))
        collate = PackingCollator(device_batch_size, max_seq_len, vocab.pad_id)
    streaming_dataset = _streaming_dataset(location, manifest, keys, max_seq_len, batch_size=cells_per_batch, **dataset)
    loader = StreamingDataLoader(streaming_dataset, batch_size=cells_per_batch, collate_fn=collate,
                                 drop_last=drop_last, num_workers=num_workers, pin_memory=pin_memory,
                                 prefetch_factor=prefetch_factor if num_workers else None,
                                 persistent_workers=persistent_workers and num_workers > 0, timeout=timeout)
    return DataSpec(loader, get_num_tokens_in_batch=lambda batch: int(batch["attention_mask"].sum()))


PACKED_FILL = 0.98  # of a row's tokens, what ``auto`` asks the cells read per row to bring on average


def resolve_packing_ratio(packing_ratio, manifest: dict, max_seq_len: int) -> float:
    """Cells read per packed row: a number, or ``auto``: as many as bring 98% of a row's tokens on average,
    from the mean cell length the data's manifest records (rows left over carry the rest)."""
    if packing_ratio == "auto":
        mean_length = manifest["tokens"] / max(1, manifest["cells"]["written"])
        return max(1.0, PACKED_FILL * max_seq_len / mean_length)
    try:
        ratio = float(packing_ratio)
    except (TypeError, ValueError):
        ratio = 0.0
    if ratio < 1:
        raise MaxtokiError(f"dataset.packing_ratio {packing_ratio!r}: give auto or a number of cells per row, "
                           "at least 1")
    return ratio


def build_cells_loader(**kwargs):
    return build_loader("cells", **kwargs)


def build_paragraphs_loader(**kwargs):
    return build_loader("paragraphs", **kwargs)
