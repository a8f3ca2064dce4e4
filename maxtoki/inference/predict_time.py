"""TimeBetweenCells inference: one forward pass per prompt ending in ``<eoq>``.

The softmax at ``<eoq>``, renormalized over the numeric tokens, gives the expected time (in time
units), its arg-max token and an interval (the central 80% of that distribution by default, checked
for coverage and optionally calibrated on held-out prompts). Results are scored against the truth
and against three baselines that need no model: the training-mean Δ, the per-group mean Δ, and a
linear regressor on the cells' expression (``linear_baseline``), as in the paper.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from maxtoki.data.blueprint import TASK_NAMES, TIME_BETWEEN_CELLS
from maxtoki.data.cell_store import CellStore
from maxtoki.errors import MaxtokiError
from maxtoki.inference.linear_baseline import linear_baseline
from maxtoki.inference.timelapse_readout import (
    DEFAULT_INTERVAL,
    Readout,
    TimelapseReadout,
    conformal_margin,
    coverage,
)
from maxtoki.vocab import Vocabulary


def load_model(checkpoint: str, data_vocab: Vocabulary):
    """A ``LlamaForCausalLM`` from a Hugging Face directory or a Composer checkpoint, checked against the data."""
    from transformers import LlamaForCausalLM

    from maxtoki.inference.export import load_composer_checkpoint

    if (Path(checkpoint) / "config.json").exists():
        model = LlamaForCausalLM.from_pretrained(checkpoint).eval()
    else:
        model = load_composer_checkpoint(checkpoint)
    expected = (getattr(model.config, "maxtoki", None) or {}).get("vocabulary_sha256")
    if expected and expected != data_vocab.sha256:
        raise MaxtokiError(f"{checkpoint}: the model was trained with another vocabulary than the data's")
    if model.config.vocab_size < len(data_vocab):
        raise MaxtokiError(f"{checkpoint}: the model knows {model.config.vocab_size} tokens, the data uses "
                           f"{len(data_vocab)}")
    return model


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
            interval: float = DEFAULT_INTERVAL) -> Readout:
    """Expected and arg-max timelapse of every example and its interval (arrays, time units)."""
    import torch

    limit = model.config.max_position_embeddings
    too_long = [len(e["prompt_ids"]) for e in examples if len(e["prompt_ids"]) > limit]
    if too_long:
        raise MaxtokiError(f"{len(too_long)} prompts are longer ({max(too_long)} tokens) than the model's context "
                           f"({limit}); make paragraphs with --max-seq-len {limit}")
    model = model.to(device)
    readout = TimelapseReadout(vocab, device, interval)
    parts = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            longest = max(len(e["prompt_ids"]) for e in batch)
            ids = torch.full((len(batch), longest), vocab.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, example in enumerate(batch):
                ids[row, :len(example["prompt_ids"])] = torch.as_tensor(example["prompt_ids"].astype(np.int64))
                mask[row, :len(example["prompt_ids"])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            last = mask.sum(dim=1) - 1
            parts.append(readout.read(logits[torch.arange(len(batch)), last.to(device)]))
    return Readout(*(np.concatenate([getattr(p, field) for p in parts]) for field in ("expected", "argmax", "low",
                                                                                       "high")))


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


def predict_time(checkpoint: str, data: str, out: str | Path, train_data: str | None = None,
                 batch_size: int = 8, device: str = "cpu", interval: float = DEFAULT_INTERVAL,
                 calibration_data: str | None = None) -> dict:
    """Write predictions.csv, metrics.json and predicted_vs_true.png to ``out``; returns the metrics.

    ``calibration_data`` (evaluation paragraphs of cells held out from training and from ``data``, e.g. a
    validation split) calibrates the intervals: both ends move by the conformal margin measured there.
    """
    import pandas as pd

    examples, vocab = evaluation_prompts(data, TIME_BETWEEN_CELLS)
    model = load_model(checkpoint, vocab)
    readout = predict(model, examples, vocab, batch_size, device, interval)
    expected, argmax = readout.expected, readout.argmax
    table = pd.DataFrame({"group": [str(e["group"]) for e in examples],
                          "true_timelapse": [int(e["timelapse"]) for e in examples],
                          "predicted_timelapse": expected, "argmax_timelapse": argmax.astype(int),
                          "interval_low": readout.low, "interval_high": readout.high})
    training = [e for e in CellStore(train_data) if int(e["task"]) == TIME_BETWEEN_CELLS] if train_data else None
    train = training or examples
    train_deltas = pd.DataFrame({"group": [str(e["group"]) for e in train],
                                 "timelapse": [float(e["timelapse"]) for e in train]})
    mean = float(train_deltas["timelapse"].mean())
    group_means = train_deltas.groupby("group")["timelapse"].mean()
    true = table["true_timelapse"].to_numpy(dtype=float)
    linear, linear_fit = linear_baseline(examples, vocab, training)
    table["linear_baseline_timelapse"] = linear
    intervals = {"interval_nominal": interval, "interval_coverage": coverage(readout.low, readout.high, true),
                 "interval_mean_width": float(np.mean(readout.high - readout.low))}
    shown = (readout.low, readout.high)
    if calibration_data:
        calibration, _ = evaluation_prompts(calibration_data, TIME_BETWEEN_CELLS)
        on_calibration = predict(model, calibration, vocab, batch_size, device, interval)
        margin = conformal_margin(on_calibration.low, on_calibration.high,
                                  np.array([float(e["timelapse"]) for e in calibration]), interval)
        if not np.isfinite(margin):
            raise MaxtokiError(f"{calibration_data}: {len(calibration)} TimeBetweenCells prompts are too few to "
                               f"calibrate {interval:.0%} intervals; give at least "
                               f"{math.ceil(interval / (1 - interval))}")
        shown = (readout.low - margin, readout.high + margin)
        table["calibrated_low"], table["calibrated_high"] = shown
        intervals["calibrated"] = {"from": calibration_data, "prompts": len(calibration), "margin": margin,
                                   "coverage": coverage(*shown, true),
                                   "mean_width": float(np.mean(shown[1] - shown[0]))}
    metrics = {
        "examples": len(table),
        "model": scores(expected, true),
        "model_argmax": scores(argmax.astype(float), true),
        "baseline_training_mean": scores(np.full(len(true), mean), true),
        "baseline_group_mean": scores(table["group"].map(group_means).fillna(mean).to_numpy(dtype=float), true),
        "baseline_linear": scores(linear, true),
        "baseline_linear_fit": linear_fit,
        "prediction_std": float(np.std(expected)),
        "true_std": float(np.std(true)),
        "warning": collapse_warning(expected, true),
        **intervals,
        "baselines_from": train_data or f"{data} itself (no --train-data given: the means are optimistic, the "
                                        "linear regressor is cross-fitted: baseline_linear_fit)",
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "predictions.csv", index=False)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _scatter(true, expected, shown, metrics, out / "predicted_vs_true.png")
    return metrics


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
    model, base = metrics["model"], metrics["baseline_training_mean"]
    ax.set_xlabel("true time between cells")
    ax.set_ylabel("predicted (expected value)")
    ax.set_title(f"MAE {model['mae']:.1f} (training-mean baseline {base['mae']:.1f}), r = {model['pearson_r']:.2f}",
                 fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
