"""What a person at the console sees besides results: the library's notices, progress bars, and ``--quiet``.

The library reports through ``logging.getLogger(__name__)`` loggers below ``maxtoki`` and leaves the
choice of what to show to its caller: by default (Python's logging) only warnings reach stderr. The
command line calls ``show_notices``: ``maxtoki: message``, notices on stdout, warnings on stderr.
Progress bars (``progress_bar``) and training progress ask ``quiet()`` before they draw; ``set_quiet``
silences them and the notices alike, and ``silenced`` also drops what a command prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

_quiet = False


def set_quiet(quiet: bool = True) -> None:
    """Silence notices, progress bars and training progress (errors still print)."""
    global _quiet
    _quiet = quiet


def quiet() -> bool:
    return _quiet


class NoticeHandler(logging.Handler):
    """``maxtoki: message``: notices on stdout, warnings and errors on stderr. The streams are looked up at each
    record, so a redirection made later (a test's capture, ``contextlib.redirect_stdout``) applies."""

    def emit(self, record: logging.LogRecord) -> None:
        if _quiet and record.levelno < logging.ERROR:
            return
        stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        try:
            stream.write(f"maxtoki: {record.getMessage()}\n")
            stream.flush()
        except Exception:  # a closed stream must not stop the program (logging's own rule)
            self.handleError(record)


def show_notices() -> None:
    """What the command line shows: the ``maxtoki`` loggers' notices from INFO up, through ``NoticeHandler``
    only (llm-foundry's root handler would repeat them in its own format)."""
    logger = logging.getLogger("maxtoki")
    if not any(isinstance(handler, NoticeHandler) for handler in logger.handlers):
        logger.addHandler(NoticeHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def progress_bar(total: int, desc: str, unit: str = "cells"):
    """A tqdm bar on interactive terminals; silent in logs, in tests and under ``set_quiet``."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=True if _quiet else None,
                dynamic_ncols=True)


@contextlib.contextmanager
def silenced():
    """Nothing but errors: notices and progress off, and whatever the block prints (a command's results, other
    libraries' chatter) dropped. An exception leaves the block with the streams restored, so it still shows."""
    set_quiet(True)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), \
                contextlib.redirect_stderr(devnull):
            yield
    finally:
        set_quiet(False)
