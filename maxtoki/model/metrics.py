"""Metrics: next-gene cross-entropy, perplexity and top-1 accuracy over scored tokens, and, for
TimeBetweenCells, the error of the expected time in time units, Pearson r, and the spread of the
distribution over time tokens (logged on training batches too, so a read-out collapsing to a constant
shows next to the loss).

Each metric's ``update`` takes the batch and the model's ``Scored`` output: the logits of exactly
the positions the loss scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from maxtoki.model.losses import Scored, numeric_distribution


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
        """The mean over next-gene positions; NaN when there were none (an evaluation of TimeBetweenCells only),
        as the timelapse metrics do without examples, not a cross-entropy of 0."""
        if self.count == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.count).float()


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
    """Collects (predicted, true) timelapses of the TimeBetweenCells examples.

    ``window``: keep the last ``window`` examples through ``reset`` (Composer resets training metrics
    every batch, and a Pearson r over one batch's few examples says nothing).
    """

    full_state_update = False

    def __init__(self, window: int | None = None):
        super().__init__()
        self.window = window
        self.add_state("predicted", default=[], dist_reduce_fx="cat")
        self.add_state("true", default=[], dist_reduce_fx="cat")
        self.add_state("spread", default=[], dist_reduce_fx="cat")

    def update(self, batch: dict, outputs: Scored, model) -> None:
        # appended even when empty: every rank then holds a float64 vector, which the gather across
        # processes needs (a rank whose batches had no TimeBetweenCells example would otherwise hold none)
        expected, spread, _ = numeric_distribution(outputs.logits[outputs.readout].detach(), model.numeric_ids,
                                                   model.numeric_values)
        self.predicted.append(expected.double())
        self.true.append(batch["timelapse"][outputs.rows[outputs.readout]].double())
        self.spread.append(spread.double())

    def reset(self) -> None:
        kept = None
        if self.window and isinstance(self.predicted, list) and self.predicted:
            kept = [dim_zero_cat(state)[-self.window:] for state in (self.predicted, self.true, self.spread)]
        super().reset()
        if kept is not None:
            self.predicted, self.true, self.spread = ([state] for state in kept)

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


class TimelapseSpread(_TimelapseMetric):
    """Mean standard deviation of the distribution over time tokens at ``<eoq>`` (time units)."""

    def compute(self):
        predicted, _ = self._values()
        return torch.tensor(float("nan")) if predicted is None else dim_zero_cat(self.spread).mean().float()
