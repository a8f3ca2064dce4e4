"""Random access to stage-1 cells in MDS shards, local or ``s3://``, without loading the corpus.

Shards are opened lazily (downloaded to a cache directory on first use when remote) and single
samples are read by global index. Unlike ``StreamingDataset`` it keeps no shared state between
processes, so every worker of a parallel conversion can open its own store.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxtoki import storage
from maxtoki.data.shards.destination import INDEX_NAME, MANIFEST_NAME
from maxtoki.data.shards.mds import _import_without_package_init
from maxtoki.errors import MaxtokiError


class CellStore:
    def __init__(self, location: str, cache_dir: str | None = None):
        self.location = str(location).rstrip("/")
        self.remote = storage.is_remote(self.location)
        # local shards are read where they are; remote ones are downloaded into the cache on first use (without
        # one given, a temporary directory that goes with this object)
        self._scratch = tempfile.TemporaryDirectory(prefix="maxtoki-cells-") if self.remote and not cache_dir else None
        self.root = (cache_dir or self._scratch.name) if self.remote else self.location
        index = json.loads(self._read_small(INDEX_NAME))
        self._shards = index["shards"]
        if not self._shards:
            raise MaxtokiError(f"{self.location}: the data set is empty (its shard index lists no shards)")
        counts = np.array([shard["samples"] for shard in self._shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._readers: dict[int, object] = {}
        self.manifest = json.loads(self._read_small(MANIFEST_NAME))

    def _read_small(self, name: str) -> bytes:
        if self.remote:
            return storage.download_bytes(f"{self.location}/{name}")
        path = Path(self.location) / name
        if not path.exists():
            hint = "not a finished maxtoki output (no manifest.json)" if name == MANIFEST_NAME else \
                "not a directory of MDS shards (no index.json)"
            raise MaxtokiError(f"{self.location}: {hint}")
        return path.read_bytes()

    def vocabulary(self):
        """The vocabulary stored beside the shards (or, for older outputs, the file its manifest names)."""
        from maxtoki.vocab import VOCAB_FILE, Vocabulary

        recorded = self.manifest.get("vocabulary", {})
        try:
            vocab = Vocabulary.from_bytes(self._read_small(VOCAB_FILE), f"{self.location}/{VOCAB_FILE}")
        except MaxtokiError:
            if not recorded.get("path") or not Path(recorded["path"]).exists():
                raise MaxtokiError(f"{self.location}: holds no {VOCAB_FILE} and the vocabulary its manifest names "
                                   f"({recorded.get('path')}) is not here; remake the data") from None
            vocab = Vocabulary.load(recorded["path"])
        if recorded.get("sha256") and vocab.sha256 != recorded["sha256"]:
            raise MaxtokiError(f"{self.location}: its vocabulary does not match its manifest; remake the data")
        return vocab

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def columns(self) -> list[str]:
        return list(self._shards[0]["column_names"])

    def column_values(self, names, option: str = "") -> dict[str, np.ndarray]:
        """Each named column of every cell, as strings, in one pass; ``option`` names what asked for a missing one."""
        missing = [name for name in names if name not in self.columns]
        if missing:
            raise MaxtokiError(f"{option + ': ' if option else ''}{self.location} has no column {missing[0]!r}; its "
                               f"columns are: {', '.join(self.columns)} (keep obs columns at tokenization with "
                               "--keep-obs)")
        values = {name: [] for name in names}
        if names:
            for sample in self:
                for name in names:
                    values[name].append(str(sample[name]))
        return {name: np.array(column, dtype=object) for name, column in values.items()}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"cell {index} is outside 0..{len(self) - 1}")
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        return self._reader(shard).get_item(int(index - self._starts[shard]))

    def __iter__(self):
        """Every sample in order; each shard file is read once (not one open per sample)."""
        for shard in range(len(self._shards)):
            reader = self._reader(shard)
            with open(os.path.join(self.root, self._shards[shard]["raw_data"]["basename"]), "rb") as handle:
                data = handle.read()
            samples = self._shards[shard]["samples"]
            offsets = np.frombuffer(data, np.uint32, count=samples + 1, offset=4)
            for i in range(samples):
                yield reader.decode_sample(data[offsets[i]:offsets[i + 1]])

    def _reader(self, shard: int):
        reader = self._readers.get(shard)
        if reader is None:
            info = self._shards[shard]
            self._ensure_local(info)
            mds_reader = _import_without_package_init("streaming.base.format.mds.reader").MDSReader
            reader = self._readers[shard] = mds_reader.from_json(self.root, None, info)
        return reader

    def _ensure_local(self, info: dict) -> None:
        raw = os.path.join(self.root, info["raw_data"]["basename"])
        if os.path.exists(raw):
            return
        zipped = info.get("zip_data")
        source = zipped["basename"] if zipped else info["raw_data"]["basename"]
        local = os.path.join(self.root, source)
        if not os.path.exists(local):
            if not self.remote:
                raise MaxtokiError(f"{self.location}: shard {source} is missing; the output is incomplete")
            storage.download_file(f"{self.location}/{source}", local)
        if zipped:
            decompress = _import_without_package_init("streaming.base.compression").decompress
            data = decompress(info["compression"], Path(local).read_bytes())
            tmp = f"{raw}.tmp-{os.getpid()}"
            Path(tmp).write_bytes(data)
            os.replace(tmp, raw)


@dataclass
class CellIndex:
    """What paragraph sampling needs to know of every cell: its time, trajectory group and dataset."""

    times: np.ndarray  # float64, per cell (NaN when unknown)
    group_codes: np.ndarray  # int64 index into group_names, per cell
    group_names: list[str]
    datasets: np.ndarray  # object, per cell
    lengths: np.ndarray  # int64 tokens per cell

    def __len__(self) -> int:
        return len(self.times)


def build_cell_index(store: CellStore, group_columns: tuple[str, ...] = (), separator: str = "|") -> CellIndex:
    """One pass over the shards; memory is a few numbers per cell, not the tokens."""
    columns = store.columns
    if "time" not in columns:
        raise MaxtokiError(f"{store.location}: the cells have no time; tokenize them with --time-column COL")
    missing = [c for c in group_columns if c not in columns]
    if missing:
        raise MaxtokiError(f"{store.location}: no column {missing[0]!r} in the cells; the columns are: "
                           f"{', '.join(columns)} (keep obs columns at tokenization with --keep-obs)")
    n = len(store)
    times = np.empty(n, dtype=np.float64)
    lengths = np.empty(n, dtype=np.int64)
    datasets = np.empty(n, dtype=object)
    groups = np.empty(n, dtype=object)
    for i, sample in enumerate(store):
        times[i] = sample["time"]
        lengths[i] = sample["length"]
        datasets[i] = sample["dataset"]
        if group_columns:
            groups[i] = separator.join(str(sample[c]) for c in group_columns)
        else:
            groups[i] = sample["group"] if "group" in columns else sample["dataset"]
    names, codes = np.unique(groups.astype(str), return_inverse=True)
    return CellIndex(times, codes.astype(np.int64), [str(x) for x in names], datasets, lengths)
