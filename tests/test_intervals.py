"""Intervals of predicted times: read off the model's distribution exactly, and calibrated to their nominal
coverage on simulated data."""

import numpy as np
import pytest
import torch

from maxtoki.inference.timelapse_readout import TimelapseReadout, conformal_margin, coverage
from maxtoki.vocab import Vocabulary


def test_the_interval_is_the_central_share_of_the_distribution_over_times():
    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(1, 4)], max_time=10)
    logits = torch.full((1, len(vocab)), -1e4)
    for time, mass in ((-2, 0.05), (0, 0.45), (3, 0.35), (5, 0.15)):  # cumulative 0.05, 0.5, 0.85, 1
        logits[0, vocab.time_token(time)] = float(np.log(mass))
    wide = TimelapseReadout(vocab, nominal=0.8).read(logits)  # from the 10% to the 90% point
    assert (wide.low[0], wide.high[0]) == (0, 5)
    assert wide.expected[0] == pytest.approx(-2 * 0.05 + 3 * 0.35 + 5 * 0.15)
    assert wide.argmax[0] == 0
    narrow = TimelapseReadout(vocab, nominal=0.5).read(logits)  # from the 25% to the 75% point
    assert (narrow.low[0], narrow.high[0]) == (0, 3)


@pytest.mark.parametrize("width", [1.0, 4.0])  # intervals too narrow, then too wide, for the truth's spread
def test_conformal_calibration_reaches_the_nominal_coverage(width):
    rng = np.random.default_rng(0)

    def prompts(n):
        centre = rng.uniform(-50, 50, n)
        return centre - width, centre + width, centre + rng.normal(0, 2, n)  # the truth: sd 2

    low, high, true = prompts(500)
    margin = conformal_margin(low, high, true, 0.8)
    assert margin == pytest.approx(2 * 1.2816 - width, abs=0.3)  # the 80% interval of N(0, 2)
    low, high, true = prompts(20_000)  # new prompts, exchangeable with the calibration ones
    raw = coverage(low, high, true)
    assert (raw < 0.5) if width == 1.0 else (raw > 0.9)
    assert coverage(low - margin, high + margin, true) == pytest.approx(0.8, abs=0.03)


def test_too_few_calibration_prompts_give_no_finite_margin():
    assert conformal_margin(np.zeros(3), np.zeros(3), np.ones(3), 0.8) == np.inf
