"""Integrity of Composer checkpoint files, checked before anything is loaded from them."""

from __future__ import annotations

from pathlib import Path

from maxtoki.errors import MaxtokiError


def check_checkpoint_file(path: str | Path, name: str | None = None) -> None:
    """A checkpoint is a zip archive with a CRC per member: a truncated upload or a flipped byte is refused
    here, before anything is loaded from it."""
    import zipfile

    name = name or str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        raise MaxtokiError(f"{name}: damaged or incomplete checkpoint ({exc}); use an earlier checkpoint or "
                           "save it again") from None
    if damaged is not None:
        raise MaxtokiError(f"{name}: damaged checkpoint ({damaged} fails its checksum); use an earlier checkpoint")


def fetch_checked_checkpoint(uri: str, local_path: str, name: str) -> None:
    """Download a remote checkpoint to ``local_path`` and check it there: a damaged one is deleted and
    refused. The file appears under its name only once checked, so whoever waits for it never reads
    half of it."""
    import os

    from maxtoki import storage

    staging = f"{local_path}.unchecked"
    storage.download_file(uri, staging)
    try:
        check_checkpoint_file(staging, name)
    except MaxtokiError:
        os.remove(staging)
        raise
    os.replace(staging, local_path)


def wait_for_file(path: str, timeout_s: float, what: str) -> None:
    """Ranks other than a node's first wait for the file that the first one fetches."""
    import os
    import time

    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise MaxtokiError(f"{what}: not fetched by this node's first rank within {timeout_s:.0f} s; see its "
                               "output for why")
        time.sleep(1)
