"""Run independent parts of a conversion in worker processes, in order, with one progress bar.

Workers report progress per chunk through a queue, so the bar moves smoothly even when each part
is large. With one worker everything runs in this process (no start-up cost).
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from maxtoki.console import progress_bar


def run_parts(worker: Callable, tasks: Sequence, workers: int, total: int, desc: str) -> Iterator:
    """Yield ``worker(task, report)`` for every task, in task order; ``report(n)`` advances the bar."""
    with progress_bar(total, desc) as bar:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                yield worker(task, bar.update)
            return
        # fork where the platform has it: workers inherit the imported libraries (no start-up
        # import cost) and need no importable __main__; spawn elsewhere
        context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with context.Manager() as manager:
            updates = manager.Queue()
            pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context)
            try:
                futures = [pool.submit(_run_with_queue, worker, task, updates) for task in tasks]
                for future in futures:
                    while True:
                        _drain(updates, bar)
                        try:
                            result = future.result(timeout=0.1)
                            break
                        except FutureTimeout:
                            continue
                    _drain(updates, bar)
                    yield result
            finally:
                pool.shutdown(wait=True, cancel_futures=True)


def _run_with_queue(worker: Callable, task, updates):
    return worker(task, updates.put)


def _drain(updates, bar) -> None:
    while True:
        try:
            bar.update(updates.get_nowait())
        except queue_module.Empty:
            return
