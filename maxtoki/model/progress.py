"""Training progress for a person: one bar per run with the loss, its parts and the time left, and one
line at each evaluation.

Composer's ``log_to_console`` prints every metric every ``console_log_interval`` batches; its
``progress_bar`` prints a ``Config:`` block, names values as they are logged
(``loss/train/time_between_cells=...``) and, outside a terminal, redraws its bar with carriage returns,
thousands of times into a log file. This callback draws a tqdm bar on a terminal or in a notebook and,
elsewhere (a log file, CI, a test's capture), writes one line per tenth of the run. Every metric still
goes to the recipe's loggers (``loggers:``) and to ``trainer.state``; nothing is drawn under ``--quiet``.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque

from composer.core import Callback, State, TimeUnit
from composer.loggers import Logger
from composer.utils import dist, is_notebook

from maxtoki.console import quiet
from maxtoki.errors import MaxtokiError

TOTAL_LOSS = "loss/train/total"
PART_NAMES = {"next_cell": "NextCell", "time_between_cells": "TimeBetweenCells"}  # the stage-2 tasks
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}"  # the loss, not the rate
# (metric, how the summary names it, format); groups separated by "; " start with the group's name
EVAL_SUMMARY = [
    ("TimelapseMAE", "TimeBetweenCells: MAE", ".1f"),
    ("TimelapseMedianAE", "median error", ".1f"),
    ("TimelapsePearson", "Pearson r", ".2f"),
    ("TimelapseSpread", "spread", ".1f"),
    ("NextGeneCrossEntropy", "next gene: cross-entropy", ".3f"),
    ("NextGeneAccuracy", "accuracy", ".3f"),
]
GROUP_STARTS = ("TimeBetweenCells", "next gene")
OMITTED = {"NextGenePerplexity"}  # exp(cross-entropy)


class TrainingProgress(Callback):
    """``callbacks: {training_progress: {label: stage 1}}``: a progress bar and evaluation summaries.

    Args:
        label: names the run on each line (default: the run name).
        lines: outside a terminal, how many progress lines a run writes (one per ``1/lines`` of it).
        window: the loss shown is the mean of the last ``window`` batches (a part: of those batches that
            held its task; a batch without it reports 0).

    Example output (outside a terminal)::

        stage 2 batch 150/300 (50%), 00:45 elapsed, 00:45 left; loss 4.812 (NextCell 3.904, TimeBetweenCells 5.120)
        stage 2 eval at batch 150/300: TimeBetweenCells: MAE 21.3, median error 15.2, Pearson r 0.81, spread 24.0;
        next gene: cross-entropy 6.215, accuracy 0.081

    On a terminal: ``stage 2:  50%|█████     | 150/300 [00:45<00:45], loss 4.812 (NextCell 3.904, ...)``.
    """

    def __init__(self, label: str | None = None, lines: int = 10, window: int = 10):
        if lines < 1 or window < 1:
            raise MaxtokiError(f"callbacks.training_progress: lines ({lines}) and window ({window}) must be at "
                               "least 1")
        self.label, self.lines, self.window = label, lines, window
        self._label = label or ""
        self._recent: deque[dict[str, float]] = deque(maxlen=window)
        self._started = None  # time.monotonic() at fit start; None: nothing to draw
        self._bar = None
        self._stream = sys.stderr
        self._total: int | None = None
        self._first = 0

    def fit_start(self, state: State, logger: Logger) -> None:
        if quiet() or dist.get_global_rank() != 0:
            return
        self._stream = sys.stderr  # looked up now: a capture or redirection made since import applies
        self._label = self.label or state.run_name
        self._total = total_batches(state)
        self._first = int(state.timestamp.batch)
        self._started = time.monotonic()
        self._recent.clear()
        if is_notebook() or self._stream.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self._total, initial=self._first, desc=self._label, unit="batch",
                             bar_format=BAR_FORMAT, file=self._stream, dynamic_ncols=True, leave=True)

    def batch_end(self, state: State, logger: Logger) -> None:
        if self._started is None:
            return
        self._recent.append(dict(state.total_loss_dict))
        batch = int(state.timestamp.batch)
        losses = self.losses()
        if self._bar is not None:
            self._bar.set_postfix_str(losses, refresh=False)
            self._bar.update(batch - self._bar.n)
        elif self._line_due(batch):
            self._write(f"{self._label} batch {self._progress(batch)}; {losses}")

    def eval_end(self, state: State, logger: Logger) -> None:
        if self._started is None:
            return
        where = f"{int(state.timestamp.batch)}/{self._total}" if self._total else f"{int(state.timestamp.batch)}"
        label = "" if state.dataloader_label == "eval" else f" ({state.dataloader_label})"
        names = list((state.eval_metrics.get(state.dataloader_label) or {}))
        summary = eval_summary({name: float(state.eval_metric_values[name]) for name in names
                                if name in state.eval_metric_values})
        self._write(f"{self._label} eval{label} at batch {where}: {summary}")

    def fit_end(self, state: State, logger: Logger) -> None:
        self._close_bar()  # an evaluation after the last batch still gets its line

    def close(self, state: State, logger: Logger) -> None:
        self._close_bar()
        self._started = None

    def losses(self) -> str:
        """``loss 4.812 (NextCell 3.904, TimeBetweenCells 5.120)``: means over the recent batches."""
        keys = [key for key in self._recent[-1] if key.startswith("loss/train/")]
        mean = {}
        for key in keys:
            values = [batch[key] for batch in self._recent if key in batch and (key == TOTAL_LOSS or batch[key])]
            mean[key] = sum(values) / len(values) if values else 0.0
        parts = [f"{part_name(key)} {value:.3f}" for key, value in mean.items() if key != TOTAL_LOSS]
        total = f"loss {mean[TOTAL_LOSS]:.3f}" if TOTAL_LOSS in mean else ""
        return f"{total} ({', '.join(parts)})" if parts else total

    def _line_due(self, batch: int) -> bool:
        if not self._total:
            return batch % 100 == 0
        return batch == self._total or math.floor(batch * self.lines / self._total) > \
            math.floor((batch - 1) * self.lines / self._total)

    def _progress(self, batch: int) -> str:
        from tqdm import tqdm

        elapsed = time.monotonic() - self._started
        text = f"{batch}/{self._total} ({batch / self._total:.0%})" if self._total else f"{batch}"
        text += f", {tqdm.format_interval(elapsed)} elapsed"
        if self._total and batch > self._first:
            text += f", {tqdm.format_interval(elapsed / (batch - self._first) * (self._total - batch))} left"
        return text

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self._stream)
        else:
            print(line, file=self._stream, flush=True)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def total_batches(state: State) -> int | None:
    """The run's length in batches, where it is known (``max_duration`` in batches, or epochs of a sized loader)."""
    duration = state.max_duration
    if duration is None:
        return None
    if duration.unit == TimeUnit.BATCH:
        return int(duration.value)
    if duration.unit == TimeUnit.EPOCH and state.dataloader_len is not None:
        return int(duration.value) * int(state.dataloader_len)
    return None


def eval_summary(values: dict[str, float]) -> str:
    """``TimeBetweenCells: MAE 21.3, median error 15.2, Pearson r 0.81, spread 24.0; next gene: ...``."""
    known = {name: (text, spec) for name, text, spec in EVAL_SUMMARY}
    pieces = [(known[name][0], format_value(values[name], known[name][1]))
              for name, _, _ in EVAL_SUMMARY if name in values]
    pieces += [(name, format_value(value, ".4g")) for name, value in values.items()
               if name not in known and name not in OMITTED]
    text = ""
    for name, value in pieces:
        separator = "" if not text else "; " if name.startswith(GROUP_STARTS) else ", "
        text += f"{separator}{name} {value}"
    return text


def part_name(key: str) -> str:
    part = key.removeprefix("loss/train/")
    return PART_NAMES.get(part, part.replace("_", " "))


def format_value(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)
