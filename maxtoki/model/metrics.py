"""Evaluation metrics: next-gene cross-entropy, perplexity and top-1 accuracy over scored tokens,
and, for TimeBetweenCells, the error of the expected time in time units and Pearson r.

Each metric's ``update`` takes the batch and the model's ``Scored`` output: the logits of exactly
the positions the loss scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from maxtoki.model.losses import Scored, numeric_readout


class _TokenMetric(Metric):
    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, batch: dict, outputs: Scored, model) -> None:
        next_token = ~outputs.readout
        if not next_token.any():
            return
        selected, targets = outputs.logits[next_token].float(), outputs.labels[next_token]
        self.total += self._measure(selected, targets).sum().double()
        self.count += next_token.sum().double()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class NextGeneCrossEntropy(_TokenMetric):
    def _measure(self, logits, targets):
        return F.cross_entropy(logits, targets, reduction="none")


class NextGenePerplexity(NextGeneCrossEntropy):
    def compute(self) -> torch.Tensor:
        return torch.exp(super().compute())


class NextGeneAccuracy(_TokenMetric):
    def _measure(self, logits, targets):
        return (logits.argmax(dim=-1) == targets).double()


class _TimelapseMetric(Metric):
    """Collects (predicted, true) timelapses of the TimeBetweenCells examples."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("predicted", default=[], dist_reduce_fx="cat")
        self.add_state("true", default=[], dist_reduce_fx="cat")

    def update(self, batch: dict, outputs: Scored, model) -> None:
        # appended even when empty: every rank then holds a float64 vector, which the gather across
        # processes needs (a rank whose batches had no TimeBetweenCells example would otherwise hold none)
        expected, _ = numeric_readout(outputs.logits[outputs.readout], model.numeric_ids, model.numeric_values)
        self.predicted.append(expected.double())
        self.true.append(batch["timelapse"][outputs.rows[outputs.readout]].double())

    def _values(self):
        """Predictions and truths so far (a list of tensors, or one tensor after a distributed sync)."""
        if isinstance(self.predicted, list) and not self.predicted:
            return None, None
        predicted, true = dim_zero_cat(self.predicted), dim_zero_cat(self.true)
        return (None, None) if predicted.numel() == 0 else (predicted, true)


class TimelapseMAE(_TimelapseMetric):
    def compute(self):
        predicted, true = self._values()
        return torch.tensor(float("nan")) if predicted is None else (predicted - true).abs().mean().float()


class TimelapseMedianAE(_TimelapseMetric):
    def compute(self):
        predicted, true = self._values()
        return torch.tensor(float("nan")) if predicted is None else (predicted - true).abs().median().float()


class TimelapsePearson(_TimelapseMetric):
    def compute(self):
        predicted, true = self._values()
        if predicted is None or len(predicted) < 2:
            return torch.tensor(float("nan"))
        return torch.corrcoef(torch.stack([predicted, true]))[0, 1].float()
