"""The TimeBetweenCells read-out (spec section 5): the softmax at ``<eoq>``, renormalized over the
numeric tokens, gives the expected timelapse, its arg-max and a central interval, in the
vocabulary's time tokens.

The interval is the model's own: the central ``nominal`` share of its distribution over the time
tokens. Whether that share of true times really falls inside is measured (``interval_coverage``), and
``conformal_margin`` widens or narrows the intervals so that it does, from held-out calibration
prompts (split conformal prediction over the interval's ends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from maxtoki.vocab import Vocabulary

DEFAULT_INTERVAL = 0.8


@dataclass
class Readout:
    expected: np.ndarray
    argmax: np.ndarray
    low: np.ndarray  # the central ``nominal`` interval of the distribution over time tokens
    high: np.ndarray


class TimelapseReadout:
    def __init__(self, vocab: Vocabulary, device="cpu", nominal: float = DEFAULT_INTERVAL):
        import torch

        if not 0 < nominal < 1:
            raise ValueError("the interval's nominal coverage must lie between 0 and 1")
        values = torch.as_tensor(vocab.numeric_values[vocab.numeric_ids], dtype=torch.float64)
        order = torch.argsort(values)  # ascending times, for the cumulative distribution
        self.numeric_ids = torch.as_tensor(vocab.numeric_ids, device=device)[order.to(device)]
        self.values = values[order].to(device)
        self.nominal = nominal

    def __call__(self, logits_at_eoq) -> tuple[np.ndarray, np.ndarray]:
        """Expected and arg-max timelapse of each row of ``logits_at_eoq`` (rows x vocabulary)."""
        readout = self.read(logits_at_eoq)
        return readout.expected, readout.argmax

    def read(self, logits_at_eoq) -> Readout:
        import torch

        probabilities = torch.softmax(logits_at_eoq[:, self.numeric_ids].double(), dim=-1)
        cumulative = torch.cumsum(probabilities, dim=-1)
        tail = (1 - self.nominal) / 2
        last = len(self.values) - 1
        low = torch.searchsorted(cumulative, torch.full((len(cumulative), 1), tail, dtype=torch.float64,
                                                        device=cumulative.device)).clamp(max=last)
        high = torch.searchsorted(cumulative, torch.full((len(cumulative), 1), 1 - tail, dtype=torch.float64,
                                                         device=cumulative.device)).clamp(max=last)
        return Readout((probabilities @ self.values).cpu().numpy(),
                       self.values[probabilities.argmax(dim=-1)].cpu().numpy(),
                       self.values[low[:, 0]].cpu().numpy(), self.values[high[:, 0]].cpu().numpy())


def coverage(low: np.ndarray, high: np.ndarray, true: np.ndarray) -> float:
    """Share of true times inside their intervals."""
    return float(np.mean((true >= low) & (true <= high)))


def conformal_margin(low: np.ndarray, high: np.ndarray, true: np.ndarray, nominal: float) -> float:
    """How far to move both ends of every interval (outwards if positive) so that at least ``nominal`` of new
    prompts, exchangeable with these calibration prompts, have their true time inside: the
    ceil((n + 1) nominal)-th smallest of max(low - true, true - high)."""
    scores = np.sort(np.maximum(low - true, true - high))
    rank = math.ceil((len(scores) + 1) * nominal)
    return float(scores[rank - 1]) if rank <= len(scores) else math.inf
