"""TimeBetweenCells inference: one forward pass per prompt ending in ``<eoq>``.

The softmax at ``<eoq>``, renormalized over the numeric tokens, gives the expected time (in time
units), its arg-max token and an interval (the central 80% of that distribution by default, checked
for coverage and optionally calibrated on held-out prompts). Results are scored against the truth
and against three baselines that need no model: the training-mean Δ, the paper's naive baseline (the most
common time of the query cell's kind, ``naive_baseline``), and a linear regressor on the cells' expression
(``linear_baseline``), as in the paper; and next to them a ceiling, a per-cell time classifier on the same
encoded cells (``ceiling_baseline``), which says how much of the time its cells carry the model reads.
Where donors exist, also per donor (``donor_scores``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from maxtoki.data.paragraphs.blueprint import TASK_NAMES, TIME_BETWEEN_CELLS
from maxtoki.data.paragraphs.cell_store import CellStore
from maxtoki.errors import MaxtokiError
from maxtoki.inference.ceiling_baseline import ceiling_baseline
from maxtoki.inference.donor_scores import donor_scores, donors_of, per_donor
from maxtoki.inference.linear_baseline import linear_baseline
from maxtoki.inference.loading import model_for, untrained_time_warning
from maxtoki.inference.naive_baseline import CellTimes, cell_kinds, naive_timelapses
from maxtoki.inference.timelapse_readout import (
    DEFAULT_INTERVAL,
    Readout,
    TimelapseReadout,
    conformal_level,
    coverage,
    leave_out_levels,
)
from maxtoki.storage import is_remote
from maxtoki.vocab import Vocabulary


def evaluation_prompts(data: str, task: int) -> tuple[list[dict], Vocabulary]:
    """The examples of one task (1 TimeBetweenCells, 0 NextCell) of evaluation paragraphs, checked."""
    store = CellStore(data)
    if "prompt_ids" not in store.columns:
        raise MaxtokiError(f"{data}: needs evaluation paragraphs (made with `maxtoki data paragraphs --eval`)")
    vocab = store.vocabulary()
    examples = [e for e in store if int(e["task"]) == task]
    if not examples:
        raise MaxtokiError(f"{data}: holds no {TASK_NAMES[task]} examples")
    if any(e["prompt_ids"][-1] != vocab.eoq_id for e in examples):
        raise MaxtokiError(f"{data}: a prompt does not end with <eoq>; regenerate the paragraphs")
    return examples, vocab


def predict(model, examples: list[dict], vocab: Vocabulary, batch_size: int = 8, device: str = "cpu",
            interval: float = DEFAULT_INTERVAL, calibrated: float | None = None, keep: bool = False,
            keep_on_disk: str | Path | None = None) -> Readout:
    """Expected and arg-max timelapse of every example and its interval (arrays, time units); with known
    timelapses, the share each needed, and with a ``calibrated`` share, the interval of that share too;
    ``keep`` keeps each distribution (``Readout.cumulative``), in a nameless file in the folder
    ``keep_on_disk`` where given (8 bytes per prompt and time token: 24 GB for a million prompts at 3,000 time
    tokens, which memory need not hold; the file goes when the array does)."""
    import torch

    limit = model.config.max_position_embeddings
    too_long = [len(e["prompt_ids"]) for e in examples if len(e["prompt_ids"]) > limit]
    if too_long:
        raise MaxtokiError(f"{len(too_long)} prompts are longer ({max(too_long)} tokens) than the model's context "
                           f"({limit}); make paragraphs with --max-seq-len {limit}")
    model = model.to(device)
    readout = TimelapseReadout(vocab, device, interval, calibrated)
    rows, times = len(examples), len(readout.values)
    # filled in place: results gathered batch by batch in small arrays, between the batches' large temporary ones,
    # held memory that was never given back (10 KB a prompt; benchmarks/calibration_memory.py)
    filled = {field: np.full(rows, np.nan) for field in Readout.FIELDS}
    cumulative = None
    if keep:
        cumulative = _distribution_file(keep_on_disk, rows, times)
        if cumulative is None:  # no folder given, or files cannot be mapped there
            cumulative = np.empty((rows, times))
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            longest = max(len(e["prompt_ids"]) for e in batch)
            ids = torch.full((len(batch), longest), vocab.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, example in enumerate(batch):
                ids[row, :len(example["prompt_ids"])] = torch.as_tensor(example["prompt_ids"].astype(np.int64))
                mask[row, :len(example["prompt_ids"])] = 1
            last = mask.sum(dim=1) - 1
            # the output layer only where a prompt ends (over the vocabulary at every position it cost as much as
            # the rest of the model)
            kept, row_of = torch.unique(last, return_inverse=True)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           logits_to_keep=kept.to(device)).logits
            true = np.array([float(e["timelapse"]) for e in batch]) if all("timelapse" in e for e in batch) \
                else None
            part = readout.read(logits[torch.arange(len(batch)), row_of.to(device)], true, keep)
            for field in Readout.FIELDS:
                filled[field][start:start + len(batch)] = getattr(part, field)
            if keep:
                cumulative[start:start + len(batch)] = part.cumulative
    return Readout(**filled, cumulative=cumulative)


def _distribution_file(folder: str | Path | None, rows: int, times: int) -> np.ndarray | None:
    """A rows x times float64 array backed by a file in ``folder`` that has no name (unlinked at once: nothing is
    left behind, even by a killed run); None (kept in memory) without a folder, without rows or where files
    cannot be mapped. The file takes all its room at once: a disk that fills up under a mapped file kills the
    process (SIGBUS) instead of raising."""
    import errno
    import os
    import tempfile

    if folder is None or rows == 0:
        return None
    size = rows * times * np.dtype(np.float64).itemsize
    file = tempfile.TemporaryFile(dir=folder)
    try:
        os.posix_fallocate(file.fileno(), 0, size)
    except AttributeError:  # no posix_fallocate (macOS)
        file.truncate(size)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve room ahead
            file.truncate(size)
        else:
            file.close()
            raise MaxtokiError(f"{folder}: no room for the {size / 1e9:.2f} GB of distributions that calibrating the "
                               f"intervals of {rows:,} prompts keeps there ({error.strerror}); free some, or give "
                               "another output directory") from None
    try:
        return np.memmap(file, dtype=np.float64, mode="r+", shape=(rows, times))
    except (OSError, ValueError):  # a file system that cannot map files (some bucket mounts): kept in memory
        file.close()
        return None


def scores(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    error = predicted - true
    pearson = float(np.corrcoef(predicted, true)[0, 1]) if len(true) > 1 and np.ptp(predicted) > 0 else float("nan")
    return {"mae": float(np.abs(error).mean()), "median_absolute_error": float(np.median(np.abs(error))),
            "rmse": float(np.sqrt((error ** 2).mean())), "pearson_r": pearson}


COLLAPSE_RATIO = 0.1  # predictions whose spread is under a tenth of the truth's carry almost no information


def collapse_warning(predicted: np.ndarray, true: np.ndarray) -> str | None:
    """One line when the predictions barely vary compared with the truth: a model predicting a constant."""
    spread, truth_spread = float(np.std(predicted)), float(np.std(true))
    if truth_spread == 0 or spread >= COLLAPSE_RATIO * truth_spread:
        return None
    return (f"the model predicts nearly the same time for every prompt ({np.mean(predicted):.1f} ± {spread:.2f}, "
            f"while the truth varies by ± {truth_spread:.1f}): it has not learned to tell cells apart; train longer, "
            "or check the training log's TimelapseSpread and TimelapsePearson")


def predict_time(model, data: str, out: str | Path, train_data: str | None = None,
                 batch_size: int = 8, device: str = "cpu", interval: float = DEFAULT_INTERVAL,
                 calibration_data: str | None = None, baseline_columns: tuple[str, ...] = (),
                 donor_column: str | None = None, allow_untrained_time: bool = False,
                 calibration_failure: str = "raise") -> dict:
    """Write predictions.csv, metrics.json and predicted_vs_true.png to ``out`` (and per_donor.csv where donors
    exist); returns the metrics. ``model``: a checkpoint path or a model from ``load_model``.

    ``calibration_data`` (evaluation paragraphs of cells held out from training and from ``data``, e.g. a
    validation split) calibrates the intervals: the share of the model's distribution they span becomes the one
    that held the truth for ``interval`` of those prompts.
    ``baseline_columns`` (cell columns, e.g. cell_type sex) define the kinds of the naive baseline.
    ``donor_column`` (a cell column) names each query cell's donor; without it the paragraphs' groups are the
    donors when they were made from cell columns (``--group-columns`` at tokenization or for the paragraphs).
    A model whose time tokens stage 2 never trained is refused unless ``allow_untrained_time``.
    ``calibration_failure="warn"``: calibration data that cannot calibrate (too few prompts) leaves the intervals
    uncalibrated, with a warning in the metrics, instead of stopping (the pipeline, whose model is trained by then).
    """
    import pandas as pd

    examples, vocab = evaluation_prompts(data, TIME_BETWEEN_CELLS)
    model = model_for(model, vocab)
    untrained = untrained_time_warning(model, allow_untrained_time)
    calibration, calibration_error = None, None
    if calibration_data:
        try:
            calibration = _calibration_needed(model, calibration_data, vocab, batch_size, device, interval)
        except MaxtokiError as error:
            if calibration_failure != "warn":
                raise
            calibration_data, calibration_error = None, f"intervals not calibrated: {error}"
    if calibration is not None:  # each scored distribution waits there for its share, in a file without a name
        Path(out).mkdir(parents=True, exist_ok=True)
    readout = predict(model, examples, vocab, batch_size, device, interval, keep=calibration is not None,
                      keep_on_disk=out)
    expected, argmax = readout.expected, readout.argmax
    training_paragraphs = list(CellStore(train_data)) if train_data else None  # both tasks: all their cells
    training = [e for e in training_paragraphs if int(e["task"]) == TIME_BETWEEN_CELLS] if train_data else None
    cells = CellColumns([*baseline_columns, *([donor_column] if donor_column else [])])
    table = pd.DataFrame({"group": [str(e["group"]) for e in examples],
                          "true_timelapse": [int(e["timelapse"]) for e in examples],
                          "predicted_timelapse": expected, "argmax_timelapse": argmax.astype(int),
                          "interval_low": readout.low, "interval_high": readout.high})
    true = table["true_timelapse"].to_numpy(dtype=float)
    mean = float(np.mean([float(e["timelapse"]) for e in (training or examples)]))
    table["training_mean_timelapse"] = mean
    kinds = cell_kinds(cells.of(data), baseline_columns)
    reference = CellTimes.of(training_paragraphs, cell_kinds(cells.of(train_data), baseline_columns)) if training \
        else CellTimes.of(examples, kinds)
    table["most_common_time_timelapse"], naive_fit = naive_timelapses(examples, kinds, reference,
                                                                      leave_query_out=not training)
    table["linear_baseline_timelapse"], linear_fit = linear_baseline(examples, vocab, training)
    table["ceiling_timelapse"], ceiling_fit = ceiling_baseline(examples, vocab, training_paragraphs)
    intervals = {"interval_nominal": interval, "interval_coverage": coverage(readout.low, readout.high, true),
                 "interval_mean_width": float(np.mean(readout.high - readout.low))}
    shown = (readout.low, readout.high)
    if calibration is not None:
        if same_location(calibration_data, data):
            calibration = calibration[:0]  # the scored prompts themselves: they calibrate each other, once
        units, apart = calibration_units(examples)
        # too few prompts apart from one (inf) leave it the whole range
        shares = np.minimum(leave_out_levels(readout.needed, units, interval, calibration), 1.0)
        shown = TimelapseReadout(vocab, "cpu", interval).central(readout.cumulative, shares)
        table["calibrated_low"], table["calibrated_high"] = shown
        known = readout.needed[~np.isnan(readout.needed)]
        intervals["calibrated"] = {
            "from": calibration_data, "prompts": len(calibration), "also_from": f"the scored prompts of other {apart}",
            # the share for new prompts: every prompt with a known truth
            "share": conformal_level(np.concatenate([calibration, known]), interval),
            "scored_shares": [float(shares.min()), float(shares.max())],
            "coverage": coverage(*shown, true), "mean_width": float(np.mean(shown[1] - shown[0]))}
    predictors = {"model": "predicted_timelapse", **{key: f"{column}_timelapse" for key, column in BASELINES.items()}}
    metrics = {
        "examples": len(table),
        "model": scores(expected, true),
        "model_argmax": scores(argmax.astype(float), true),
        **{key: scores(table[column].to_numpy(dtype=float), true) for key, column in predictors.items()
           if key != "model"},
        "baseline_most_common_time_fit": {"columns": list(baseline_columns), **naive_fit},
        "baseline_linear_fit": linear_fit,
        "baseline_ceiling_fit": ceiling_fit,
        "prediction_std": float(np.std(expected)),
        "true_std": float(np.std(true)),
        "warning": "; ".join(w for w in (untrained, collapse_warning(expected, true), calibration_error) if w) or None,
        **intervals,
        "baselines_from": train_data or f"{data} itself (no --train-data given: the training mean is optimistic; "
                                        "the most common time leaves each query cell out, the linear regressor is "
                                        "cross-fitted: baseline_linear_fit)",
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if donor_column or groups_are_donors(data):
        donors = donors_of(examples, cells.of(data)[donor_column] if donor_column else None)
        metrics["per_donor"] = _per_donor(table, examples, donors, predictors, out / "per_donor.csv")
    table.to_csv(out / "predictions.csv", index=False)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _scatter(true, expected, shown, metrics, out / "predicted_vs_true.png")
    return metrics


BASELINES = {"baseline_training_mean": "training_mean", "baseline_most_common_time": "most_common_time",
             "baseline_linear": "linear_baseline", "baseline_ceiling": "ceiling"}
# metrics key -> predictions.csv column (without _timelapse); the ceiling is a reference, not one of the paper's
PAPER_BASELINES = ("baseline_training_mean", "baseline_most_common_time", "baseline_linear")


def groups_are_donors(paragraphs: str) -> bool:
    """Whether the paragraphs' groups are trajectories named by cell columns (donors), not whole datasets."""
    manifest = CellStore(paragraphs).manifest
    if manifest.get("group_columns"):
        return True
    try:
        return "group" in CellStore(manifest["cells"]["location"]).columns
    except MaxtokiError:  # the cells moved: the paragraphs alone do not say what their groups are
        return False


def _per_donor(table, examples: list[dict], donors: np.ndarray, predictors: dict[str, str], path: Path) -> dict:
    """Adds each prompt's donor and times to the table; writes the (donor, time) medians; returns their scores."""
    table["donor"] = donors
    table["context_time"] = [int(e["times"][-2]) for e in examples]
    table["true_time"] = [int(e["times"][-1]) for e in examples]
    points = per_donor(table, predictors)
    points.to_csv(path, index=False)
    return donor_scores(points, list(predictors), scores)


class CellColumns:
    """Columns of the cells that paragraphs were made of, read once per cell store and only when asked for."""

    def __init__(self, names: list[str]):
        self.names, self._read = list(dict.fromkeys(names)), {}

    def of(self, paragraphs: str) -> dict[str, np.ndarray]:
        """Each column for every cell of the store the paragraphs were made of (without columns: an empty dict)."""
        if not self.names:
            return {}
        location = CellStore(paragraphs).manifest["cells"]["location"]
        if location not in self._read:
            store = CellStore(location)
            self._read[location] = store.column_values(self.names, "--baseline-columns/--donor-column")
        return self._read[location]


def _calibration_needed(model, calibration_data: str, vocab: Vocabulary, batch_size: int, device: str,
                        interval: float) -> np.ndarray:
    """The central share of the model's distribution that each prompt of ``calibration_data`` needed to hold
    its truth; refused where they are too few to calibrate on alone."""
    calibration, _ = evaluation_prompts(calibration_data, TIME_BETWEEN_CELLS)
    needed = predict(model, calibration, vocab, batch_size, device, interval).needed
    if not np.isfinite(conformal_level(needed, interval)):
        raise MaxtokiError(f"{calibration_data}: {len(calibration)} TimeBetweenCells prompts are too few to "
                           f"calibrate {interval:.0%} intervals (give at least "
                           f"{math.ceil(interval / (1 - interval))}), or their true times lie outside the "
                           "vocabulary's time tokens")
    return needed


def same_location(first: str, second: str) -> bool:
    if is_remote(first) or is_remote(second):
        return first.rstrip("/") == second.rstrip("/")
    return Path(first).resolve() == Path(second).resolve()


def calibration_units(examples: list[dict]) -> tuple[list[set], str]:
    """What a scored prompt must share nothing of with the prompts it is calibrated on: its donor where the
    prompts come from several (cells of one donor are alike), else its cells."""
    groups = [str(e["group"]) for e in examples]
    if len(set(groups)) > 1:
        return [{group} for group in groups], "donors"
    return [set(np.asarray(e["cell_indices"]).tolist()) for e in examples], "cells"


def _scatter(true: np.ndarray, predicted: np.ndarray, interval: tuple[np.ndarray, np.ndarray], metrics: dict,
             path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(true)) * max(1.0, float(np.ptp(true)) / 20)
    calibrated = "calibrated" in metrics
    share = metrics["calibrated"]["coverage"] if calibrated else metrics["interval_coverage"]
    bars = np.maximum(0, [predicted - interval[0], interval[1] - predicted])
    ax.errorbar(true + jitter, predicted, yerr=bars, fmt="o",
                markersize=3, alpha=0.5, elinewidth=0.6,
                label=f"{'calibrated ' if calibrated else ''}{metrics['interval_nominal']:.0%} intervals "
                      f"({share:.0%} hold the truth)")
    low = float(min(true.min(), interval[0].min()))
    high = float(max(true.max(), interval[1].max()))
    ax.plot([low, high], [low, high], color="grey", linewidth=1, label="perfect prediction")
    model = metrics["model"]
    ax.set_xlabel("true time between cells")
    ax.set_ylabel("predicted (expected value)")
    ax.set_title(f"model MAE {model['mae']:.1f}, r = {model['pearson_r']:.2f}; naive baseline "
                 f"{metrics['baseline_most_common_time']['mae']:.1f}, training mean "
                 f"{metrics['baseline_training_mean']['mae']:.1f}, ceiling {metrics['baseline_ceiling']['mae']:.1f}",
                 fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
