"""The TimeBetweenCells read-out (spec section 5): the softmax at ``<eoq>``, renormalized over the
numeric tokens, gives the expected timelapse, its arg-max and a central interval, in the
vocabulary's time tokens.

The interval is the model's own: the central ``nominal`` share of its distribution over the time
tokens. Whether that share of true times really falls inside is measured (``interval_coverage``).
Calibration keeps the model's intervals but changes their share: every prompt with a known truth
says which central share it would have needed to hold it (``needed``), and ``conformal_level``
picks the share that holds the truth for the nominal fraction of held-out calibration prompts
(split conformal prediction over the nested central intervals). Unlike moving both ends by a fixed
margin, the intervals stay where the model puts its probability, which matters when the true times
take few values.

Scored prompts with a known truth calibrate each other too (``leave_out_levels``): each one's share
comes from the calibration prompts and the scored prompts that share none of its cells (or donors).
A tenth of a small time course is a few dozen cells, and whether they happen to be easier or harder
than the scored ones moved the coverage of held-out prompts by up to 0.16; pooled that way, within
0.07 of nominal at three seeds (benchmarks/README.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from maxtoki.vocab import Vocabulary

DEFAULT_INTERVAL = 0.8
CENTRAL_BLOCK = 4096  # rows of kept distributions read at once (at 3,000 time tokens, 98 MB)


@dataclass
class Readout:
    expected: np.ndarray
    argmax: np.ndarray
    low: np.ndarray  # the central ``nominal`` interval of the distribution over time tokens
    high: np.ndarray
    needed: np.ndarray  # the smallest central share whose interval holds the true time (inf: none; NaN: unknown)
    calibrated_low: np.ndarray  # the central interval at the calibrated share (NaN without one)
    calibrated_high: np.ndarray
    cumulative: np.ndarray | None = None  # rows x time tokens (ascending), where kept to draw other intervals
    # (in memory, or an np.memmap: ``predict(..., keep_on_disk=...)``)

    FIELDS = ("expected", "argmax", "low", "high", "needed", "calibrated_low", "calibrated_high")


class TimelapseReadout:
    def __init__(self, vocab: Vocabulary, device="cpu", nominal: float = DEFAULT_INTERVAL,
                 calibrated: float | None = None):
        import torch

        if not 0 < nominal <= 1:
            raise ValueError("an interval's nominal share of the distribution must lie in (0, 1]")
        # a calibrated share may be 0 (a model that put all its mass on every calibration prompt's true time:
        # intervals of one token) or 1 (the whole range)
        if calibrated is not None and not 0 <= calibrated <= 1:
            raise ValueError("a calibrated share of the distribution must lie in [0, 1]")
        values = torch.as_tensor(vocab.numeric_values[vocab.numeric_ids], dtype=torch.float64)
        order = torch.argsort(values)  # ascending times, for the cumulative distribution
        self.numeric_ids = torch.as_tensor(vocab.numeric_ids, device=device)[order.to(device)]
        self.values = values[order].to(device)
        self.nominal, self.calibrated = nominal, calibrated

    def __call__(self, logits_at_eoq) -> tuple[np.ndarray, np.ndarray]:
        """Expected and arg-max timelapse of each row of ``logits_at_eoq`` (rows x vocabulary)."""
        readout = self.read(logits_at_eoq)
        return readout.expected, readout.argmax

    def read(self, logits_at_eoq, true: np.ndarray | None = None, keep: bool = False) -> Readout:
        """Everything the distribution at ``<eoq>`` says; ``true`` (time units, one per row) gives ``needed``;
        ``keep`` keeps the cumulative distributions (``central`` draws intervals of other shares from them)."""
        import torch

        probabilities = torch.softmax(logits_at_eoq[:, self.numeric_ids].double(), dim=-1)
        cumulative = torch.cumsum(probabilities, dim=-1)
        low, high = self._central(cumulative, self.nominal)
        rows = len(probabilities)
        calibrated = self._central(cumulative, self.calibrated) if self.calibrated is not None else \
            (np.full(rows, np.nan), np.full(rows, np.nan))
        needed = self._needed(cumulative, true) if true is not None else np.full(rows, np.nan)
        return Readout((probabilities @ self.values).cpu().numpy(),
                       self.values[probabilities.argmax(dim=-1)].cpu().numpy(), low, high, needed, *calibrated,
                       cumulative=cumulative.cpu().numpy() if keep else None)

    def central(self, cumulative: np.ndarray, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The central interval of each row's share, from kept cumulative distributions (read a block of rows at
        a time: kept on disk, they need not fit in memory)."""
        import torch

        shares = np.broadcast_to(np.asarray(shares, dtype=np.float64), (len(cumulative),))
        lows, highs = [np.zeros(0, dtype=np.float64)], [np.zeros(0, dtype=np.float64)]
        for start in range(0, len(cumulative), CENTRAL_BLOCK):
            block = slice(start, start + CENTRAL_BLOCK)
            low, high = self._central(torch.as_tensor(np.asarray(cumulative[block])), shares[block])
            lows.append(low)
            highs.append(high)
        return np.concatenate(lows), np.concatenate(highs)

    def _central(self, cumulative, share) -> tuple[np.ndarray, np.ndarray]:
        """The first time at which the cumulative distribution reaches (1 - share) / 2, and the first at which
        it reaches 1 - (1 - share) / 2 (a hair inside, so that a share equal to ``needed`` holds the truth).
        ``share``: one for all rows, or one per row."""
        import torch

        shares = np.broadcast_to(np.asarray(share, dtype=np.float64), (len(cumulative),))
        tail = torch.as_tensor(np.maximum((1 - shares) / 2 - 1e-12, 0.0), device=cumulative.device)[:, None]
        last = len(self.values) - 1
        ends = []
        for points in (tail, 1 - tail):
            found = torch.searchsorted(cumulative, points.contiguous()).clamp(max=last)
            ends.append(self.values.to(cumulative.device)[found[:, 0]].cpu().numpy())
        return ends[0], ends[1]

    def _needed(self, cumulative, true: np.ndarray) -> np.ndarray:
        """1 - 2 min(P(T <= y), P(T >= y)): the central interval of that share is the smallest holding y
        (computed from the same cumulative sums as the intervals, so that share's interval holds y exactly)."""
        import torch

        values = self.values.cpu().numpy()
        position = np.minimum(np.searchsorted(values, true), len(values) - 1)
        known = values[position] == true
        index = torch.as_tensor(position, device=cumulative.device)[:, None]
        at_most = cumulative.gather(1, index)[:, 0].cpu().numpy()
        below = cumulative.gather(1, (index - 1).clamp(min=0))[:, 0].cpu().numpy() * (position > 0)
        needed = np.clip(1 - 2 * np.minimum(at_most, 1 - below), 0.0, 1.0)
        return np.where(known, needed, np.inf)  # a true time without a token: no interval holds it


def coverage(low: np.ndarray, high: np.ndarray, true: np.ndarray) -> float:
    """Share of true times inside their intervals."""
    return float(np.mean((true >= low) & (true <= high)))


def conformal_level(needed: np.ndarray, nominal: float) -> float:
    """The central share at which at least ``nominal`` of new prompts, exchangeable with these calibration
    prompts, hold their true time: the ceil((n + 1) nominal)-th smallest share they needed (inf: too few)."""
    shares = np.sort(needed)
    rank = math.ceil((len(shares) + 1) * nominal)
    return float(shares[rank - 1]) if rank <= len(shares) else math.inf


def leave_out_levels(needed: np.ndarray, units: list[set], nominal: float, calibration: np.ndarray) -> np.ndarray:
    """Each scored prompt's calibrated share: ``conformal_level`` over the ``calibration`` prompts' needed shares
    and those of the scored prompts with a known truth that share no unit (cell or donor) with it, so that
    nothing it is calibrated on saw its cells. ``needed``: NaN where the truth is unknown."""
    prompts_of: dict = {}
    for prompt, its_units in enumerate(units):
        for unit in its_units:
            prompts_of.setdefault(unit, []).append(prompt)
    known = ~np.isnan(needed)
    levels = np.empty(len(needed))
    for prompt, its_units in enumerate(units):
        apart = known.copy()
        for unit in its_units:
            apart[prompts_of[unit]] = False
        levels[prompt] = conformal_level(np.concatenate([calibration, needed[apart]]), nominal)
    return levels
