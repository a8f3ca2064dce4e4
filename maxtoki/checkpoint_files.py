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
