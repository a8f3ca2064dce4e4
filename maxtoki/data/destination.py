"""Output locations of conversions that write MDS shards, local or ``s3://``.

Nothing looks complete until ``commit``: locally, parts are written to a hidden staging directory
that replaces the output in one rename at the end (an earlier output survives a failed rerun);
remotely, ``index.json`` and ``manifest.json`` are uploaded last. An output that already holds
anything is refused unless ``overwrite`` is given, so old and new shards never mix.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from maxtoki import storage
from maxtoki.errors import MaxtokiError

INDEX_NAME = "index.json"
MANIFEST_NAME = "manifest.json"
VOCAB_FILE = "vocab.json"  # every output carries its vocabulary, so it can be used wherever it is copied


def part_name(index: int) -> str:
    return f"part-{index:05d}"


class ShardDestination:
    def __init__(self, uri: str | os.PathLike, overwrite: bool = False):
        self.uri = str(uri).rstrip("/")
        self.overwrite = overwrite
        self.remote = storage.is_remote(self.uri)
        self._staging: Path | None = None
        self._scratch: Path | None = None

    # ----- lifecycle --------------------------------------------------------------------------
    def open(self) -> ShardDestination:
        if self.remote:
            self._open_remote()
        else:
            self._open_local()
        return self

    def _open_local(self) -> None:
        final = Path(self.uri)
        if final.exists() and not final.is_dir():
            raise MaxtokiError(f"{final}: exists and is not a directory")
        if final.is_dir() and any(final.iterdir()) and not self.overwrite:
            complete = (final / MANIFEST_NAME).exists()
            state = "holds a finished output" if complete else "is not empty (perhaps an unfinished run)"
            raise MaxtokiError(f"{final}: {state}; choose another --out, or pass --overwrite to replace it")
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(final)
        self._staging = final.parent / f".{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._staging.mkdir()

    def _open_remote(self) -> None:
        existing = storage.list_keys(self.uri)
        if existing:
            if not self.overwrite:
                complete = any(k.endswith("/" + MANIFEST_NAME) for k in existing)
                state = ("holds a finished output" if complete else
                         f"holds {len(existing)} objects but no {MANIFEST_NAME} (an unfinished run)")
                raise MaxtokiError(f"{self.uri}: {state}; choose another --out, or pass --overwrite to replace it")
            storage.delete_prefix(self.uri)
        self._scratch = Path(tempfile.mkdtemp(prefix="maxtoki-upload-"))

    def part_out(self, index: int):
        """The ``out`` argument of ``MDSWriter`` for one part."""
        name = part_name(index)
        if self.remote:
            return str(self._scratch / name), f"{self.uri}/{name}"
        return str(self._staging / name)

    def part_index(self, index: int) -> dict:
        """The index.json a finished part wrote (kept locally in both modes)."""
        out = self.part_out(index)
        local = out[0] if isinstance(out, tuple) else out
        with open(os.path.join(local, INDEX_NAME)) as handle:
            return json.load(handle)

    def release_part(self, index: int) -> None:
        """Drop the local copy of an uploaded part."""
        if self.remote:
            shutil.rmtree(self.part_out(index)[0], ignore_errors=True)

    def commit(self, part_indexes: list[dict], manifest: dict, extra_files: dict[str, bytes] | None = None) -> None:
        """Write the extra files, then the merged index and the manifest (last: they mark completion)."""
        for name, payload in (extra_files or {}).items():
            if self.remote:
                storage.upload_bytes(f"{self.uri}/{name}", payload)
            else:
                (self._staging / name).write_bytes(payload)
        index = merge_part_indexes(part_indexes)
        index_bytes = json.dumps(index, sort_keys=True).encode()
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        if self.remote:
            storage.upload_bytes(f"{self.uri}/{INDEX_NAME}", index_bytes)
            storage.upload_bytes(f"{self.uri}/{MANIFEST_NAME}", manifest_bytes)
            shutil.rmtree(self._scratch, ignore_errors=True)
            return
        (self._staging / INDEX_NAME).write_bytes(index_bytes)
        (self._staging / MANIFEST_NAME).write_bytes(manifest_bytes)
        final = Path(self.uri)
        if final.exists():
            trash = final.parent / f".{final.name}.replaced-{uuid.uuid4().hex[:8]}"
            final.rename(trash)
            self._staging.rename(final)
            shutil.rmtree(trash)
        else:
            self._staging.rename(final)
        self._staging = None

    def abort(self) -> None:
        """Remove everything this run wrote; an earlier local output is left untouched."""
        if self.remote:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                storage.delete_prefix(self.uri)
        elif self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def merge_part_indexes(part_indexes: list[dict]) -> dict:
    """One MDS index over the shards of all parts, in part order (``part-NNNNN/shard...``)."""
    shards = []
    for i, part in enumerate(part_indexes):
        for shard in part["shards"]:
            shard = copy.deepcopy(shard)
            for key in ("raw_data", "zip_data"):
                if shard.get(key):
                    shard[key]["basename"] = f"{part_name(i)}/{shard[key]['basename']}"
            shards.append(shard)
    return {"version": 2, "shards": shards}


def _remove_stale_staging(final: Path) -> None:
    """Staging directories of runs that died (their process is gone) are removed."""
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        pid = stale.name.rsplit(".partial-", 1)[1].split("-")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
