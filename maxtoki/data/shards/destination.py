"""Output locations of conversions that write MDS shards, local or ``s3://``.

Nothing looks complete until ``commit``: locally, parts are written to a hidden staging directory
that replaces the output in one rename at the end (an earlier output survives a failed rerun);
remotely, a marker object is uploaded before anything else and removed after ``index.json`` and
``manifest.json``, which are uploaded last. A rerun replaces what a killed run left behind (a
staging directory of a dead process, or a prefix that holds the marker but no manifest); any other
output that already holds something is refused unless ``overwrite`` is given, so old and new
shards never mix and data this tool did not write is never deleted.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

from maxtoki import storage
from maxtoki.errors import MaxtokiError

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
MANIFEST_NAME = "manifest.json"
UNFINISHED_NAME = "_maxtoki_unfinished.json"  # while a run writes a remote output, or the outputs of splits


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
        if not self.overwrite:
            self.refuse_existing()
        if self.remote:
            self._open_remote()
        else:
            self._open_local()
        return self

    def refuse_existing(self, finished_ok: bool = False) -> None:
        """Refuse what only ``overwrite`` may replace: a finished output (unless ``finished_ok``) and anything
        maxtoki did not write. What an unfinished run of maxtoki left may go."""
        if self.remote:
            keys = storage.list_keys(self.uri)
            _, prefix = storage.split_s3_uri(self.uri)
            names = {key[len(prefix):].lstrip("/") for key in keys}
            hint = f"its unfinished runs leave {UNFINISHED_NAME}"
        else:
            final = Path(self.uri)
            if final.exists() and not final.is_dir():
                raise MaxtokiError(f"{final}: exists and is not a directory")
            names = {p.name for p in final.iterdir()} if final.is_dir() else set()
            hint = "its unfinished runs leave nothing there"
        if MANIFEST_NAME in names:
            if finished_ok:
                return
            raise MaxtokiError(f"{self.uri}: holds a finished output; choose another --out, or pass --overwrite to "
                               "replace it")
        if names and (not self.remote or UNFINISHED_NAME not in names):
            what = _objects(len(keys)) if self.remote else "files"
            raise MaxtokiError(f"{self.uri}: holds {what} but no {MANIFEST_NAME}, so maxtoki did not write them "
                               f"({hint}); choose another --out, or pass --overwrite to delete them")

    def _open_local(self) -> None:
        final = Path(self.uri)
        if final.exists() and not final.is_dir():
            raise MaxtokiError(f"{final}: exists and is not a directory")
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(final)
        self._staging = final.parent / f".{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._staging.mkdir()

    def _open_remote(self) -> None:
        existing = storage.list_keys(self.uri)
        if existing and not self.overwrite:  # what an unfinished run left (``refuse_existing`` passed)
            marker = _read_marker(self.uri)
            _refuse_a_live_writer(self.uri, marker)
            logger.warning(f"{self.uri}: removing the {_objects(len(existing))} of an unfinished run "
                           f"({_started(marker)}) and writing the output again")
        if existing:
            storage.delete_prefix(self.uri)
        _write_marker(self.uri)
        _remove_stale_scratch()
        self._scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))

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
            storage.delete_keys(self.uri, [UNFINISHED_NAME])
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


class SplitOutputs:
    """The parent of the outputs of the splits of one run, finished once ``finished_name`` is written in it.

    Its marker is written once every split's location has passed the checks of a single output: from then on
    what the splits' locations hold is this tool's, so a rerun after a killed run may replace the splits that
    run had finished.
    """

    def __init__(self, uri: str | os.PathLike, names, finished_name: str, overwrite: bool = False):
        self.uri = str(uri).rstrip("/")
        self.names = list(names)
        self.finished_name = finished_name
        self.overwrite = overwrite
        self.remote = storage.is_remote(self.uri)

    def open(self) -> bool:
        """Claim the parent; returns whether the outputs of the splits in it may be replaced."""
        if not self.remote and Path(self.uri).exists() and not Path(self.uri).is_dir():
            raise MaxtokiError(f"{self.uri}: exists and is not a directory")
        resuming = self._exists(UNFINISHED_NAME)
        if resuming:
            marker = _read_marker(self.uri)
            _refuse_a_live_writer(self.uri, marker)
        elif self._exists(self.finished_name) and not self.overwrite:
            raise MaxtokiError(f"{self.uri}: holds a finished output; choose another --out, or pass --overwrite to "
                               "replace it")
        if not self.overwrite:
            for name in self.names:
                ShardDestination(f"{self.uri}/{name}").refuse_existing(finished_ok=resuming)
        if resuming:
            logger.warning(f"{self.uri}: replacing the splits of an unfinished run ({_started(marker)})")
        _write_marker(self.uri)
        return self.overwrite or resuming

    def commit(self, payload: bytes) -> None:
        """Write ``finished_name``, then drop the marker."""
        if self.remote:
            storage.upload_bytes(f"{self.uri}/{self.finished_name}", payload)
            storage.delete_keys(self.uri, [UNFINISHED_NAME])
        else:
            (Path(self.uri) / self.finished_name).write_bytes(payload)
            (Path(self.uri) / UNFINISHED_NAME).unlink()

    def _exists(self, name: str) -> bool:
        if self.remote:
            return storage.object_exists(f"{self.uri}/{name}")
        return (Path(self.uri) / name).exists()


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


def _objects(n: int) -> str:
    return f"{n} object" if n == 1 else f"{n} objects"


SCRATCH_PREFIX = "maxtoki-upload-"  # + pid: the local copies of the parts of a remote output being uploaded


def _write_marker(uri: str) -> None:
    """Who writes ``uri``: enough to tell a killed run from one still running on this machine."""
    payload = json.dumps({"command": " ".join(sys.argv), "host": socket.gethostname(), "pid": os.getpid(),
                          "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=2).encode()
    if storage.is_remote(uri):
        storage.upload_bytes(f"{uri}/{UNFINISHED_NAME}", payload)
    else:
        Path(uri).mkdir(parents=True, exist_ok=True)
        (Path(uri) / UNFINISHED_NAME).write_bytes(payload)


def _read_marker(uri: str) -> dict:
    try:
        if storage.is_remote(uri):
            return json.loads(storage.download_bytes(f"{uri}/{UNFINISHED_NAME}"))
        return json.loads((Path(uri) / UNFINISHED_NAME).read_bytes())
    except ValueError:
        return {}


def _refuse_a_live_writer(uri: str, marker: dict) -> None:
    pid = int(marker.get("pid", 0))
    if marker.get("host") == socket.gethostname() and pid != os.getpid() and _process_alive(pid):
        raise MaxtokiError(f"{uri}: process {pid} on this machine is writing it now ({marker.get('command')}); "
                           "wait for it to finish, or choose another --out")


def _started(marker: dict) -> str:
    return f"started {marker.get('started', 'at an unknown time')} on {marker.get('host', 'an unknown host')}"


def _remove_stale_scratch() -> None:
    """Local copies of parts left by remote runs that died (their process is gone) are removed."""
    for stale in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = stale.name[len(SCRATCH_PREFIX):].split("-")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
