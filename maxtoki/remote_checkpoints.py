"""Checkpoints in a remote save folder: which one the run's link names, which are newer (uploaded but
never linked), and pruning the old ones, which Composer never deletes from an object store.

``save_num_checkpoints_to_keep`` prunes only Composer's local copies; with an ``s3://`` save folder
every checkpoint a run uploads stays in the bucket (about 12 GB each for the 1b model with its
optimizer state). The ``prune_remote_checkpoints`` callback keeps the newest ``keep`` of them.
"""

from __future__ import annotations

import logging
import re

from composer.core import Callback, State
from composer.loggers import Logger

from maxtoki import storage
from maxtoki.errors import MaxtokiError

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"ep\d+-ba(\d+)-rank\d+\.pt")
LINK_NAME = "latest-rank0.pt.symlink"


def remote_checkpoints(save_folder: str) -> tuple[dict[int, list[str]], int]:
    """The checkpoint names of a remote save folder by batch, and the batch of the one its link names
    (0 without a link)."""
    names = [key.rsplit("/", 1)[-1] for key in storage.list_keys(save_folder)]
    by_batch: dict[int, list[str]] = {}
    for name in names:
        if match := CHECKPOINT_NAME.fullmatch(name):
            by_batch.setdefault(int(match.group(1)), []).append(name)
    linked = 0
    if LINK_NAME in names:
        target = storage.download_bytes(f"{save_folder.rstrip('/')}/{LINK_NAME}").decode()
        match = re.search(r"-ba(\d+)-", target)
        linked = int(match.group(1)) if match else 0
    return by_batch, linked


def unlinked_remote_checkpoints(save_folder: str) -> list[str]:
    """Checkpoints on the object store newer than the one the link names (all of them without a link): a
    run that lost the store uploaded them but stopped before linking them."""
    by_batch, linked = remote_checkpoints(save_folder)
    return sorted(name for batch, names in by_batch.items() if batch > linked for name in names)


def prune_remote_checkpoints(save_folder: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` linked-or-older checkpoints; returns the deleted names. The linked
    one is always among those kept, and nothing newer than it is touched (it may still be uploading)."""
    by_batch, linked = remote_checkpoints(save_folder)
    if not linked:
        return []
    settled = sorted(batch for batch in by_batch if batch <= linked)
    doomed = [name for batch in settled[:-keep] for name in by_batch[batch]]
    storage.delete_keys(save_folder, doomed)
    return doomed


LINK_POLL_SECONDS = 1.0
WORKER_PRELOAD = ["composer.utils.remote_uploader", "maxtoki.remote_checkpoints"]


class LinkCheckpointsPromptly(Callback):
    """Checkpoints of a run with a remote save folder reach the store and get linked without idling.

    Composer links a checkpoint on an object store (``latest-rank0.pt.symlink``) once a worker has seen all of
    its files there, looking again every 30 s (a fixed, private setting of Composer 0.32's CheckpointSaver):
    every ``s3://`` run idled up to 30 s after its last upload, and a run stopped in that window left its newest
    checkpoint unlinked. This callback makes the worker look every ``LINK_POLL_SECONDS``. Composer also spawns
    its upload and link workers afresh, and each imports Composer again (9 s of CPU each on a small machine,
    four per run, competing with training); here they fork from one server process that imported it once
    (with the run's environment, so endpoints and credentials set after that server started still apply).
    ``train_from_recipe`` adds this callback to runs with a remote save folder."""

    def fit_start(self, state: State, logger: Logger) -> None:
        del logger
        from composer.callbacks import CheckpointSaver

        for saver in (c for c in state.callbacks if isinstance(c, CheckpointSaver)):
            if hasattr(saver, "_symlink_upload_wait_before_next_try_in_seconds"):
                saver._symlink_upload_wait_before_next_try_in_seconds = LINK_POLL_SECONDS
            uploader = saver.remote_uploader
            for name in ("upload_executor", "check_remote_files_exist_executor"):
                if uploader is not None and hasattr(uploader, name):
                    setattr(uploader, name, forked_workers(getattr(uploader, name)))


def forked_workers(executor):
    """A process pool like ``executor`` (not started yet) whose workers fork from a server that has imported
    Composer; ``executor`` itself where forking servers do not exist (Windows) or it has started workers."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    if getattr(executor, "_processes", None) or "forkserver" not in multiprocessing.get_all_start_methods():
        return executor
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    executor.shutdown(wait=False)
    return ProcessPoolExecutor(max_workers=executor._max_workers, mp_context=context,
                               initializer=adopt_environment, initargs=(dict(os.environ),))


def adopt_environment(environment: dict[str, str]) -> None:
    """A worker's environment becomes the run's (the forking server keeps the one it started with)."""
    import os

    os.environ.clear()
    os.environ.update(environment)


class PruneRemoteCheckpoints(Callback):
    """``callbacks: {prune_remote_checkpoints: {keep: 3}}``: after each checkpoint, and once the last upload
    is done, keep only the newest ``keep`` checkpoints of the run's ``s3://`` save folder. Rank 0 prunes;
    a store that cannot be reached delays pruning, it never stops training."""

    def __init__(self, keep: int = 3):
        if int(keep) < 1:
            raise MaxtokiError("callbacks.prune_remote_checkpoints.keep must be at least 1: the linked checkpoint "
                               "is what a resumed run loads")
        self.keep = int(keep)
        self.save_folder: str | None = None

    def fit_start(self, state: State, logger: Logger) -> None:
        del logger
        from composer.callbacks import CheckpointSaver
        from composer.utils import dist

        saver = next((c for c in state.callbacks if isinstance(c, CheckpointSaver)), None)
        folder = getattr(saver, "remote_uploader", None) and saver.remote_uploader.remote_folder
        if dist.get_global_rank() == 0 and folder and storage.is_remote(folder):
            self.save_folder = folder

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        del state, logger
        self._prune()

    def epoch_checkpoint(self, state: State, logger: Logger) -> None:
        del state, logger
        self._prune()

    def post_close(self) -> None:
        self._prune()  # after fit_end, where Composer waits for the last upload and links it
        self.save_folder = None  # closing again (Composer also closes at exit) finds nothing left to do

    def _prune(self) -> None:
        if self.save_folder is None:
            return
        try:
            prune_remote_checkpoints(self.save_folder, self.keep)
        except MaxtokiError as exc:
            logger.warning(f"could not prune old checkpoints in {self.save_folder} ({exc}); will try again after "
                           "the next checkpoint")
