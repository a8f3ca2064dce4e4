"""Intervals of predicted times: read off the model's distribution exactly, and calibrated to their nominal
coverage on simulated data."""

import numpy as np
import pytest
import torch

from maxtoki.inference.timelapse_readout import TimelapseReadout, conformal_level, coverage
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


def test_the_share_each_prompt_needed_is_the_smallest_central_interval_holding_its_truth():
    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(1, 4)], max_time=10)
    logits = torch.full((4, len(vocab)), -1e4)
    for time, mass in ((-2, 0.05), (0, 0.45), (3, 0.35), (5, 0.15)):
        logits[:, vocab.time_token(time)] = float(np.log(mass))
    # truth 0: P(T <= 0) = 0.5, P(T >= 0) = 0.95 -> share 0; truth 5: P(T >= 5) = 0.15 -> 0.7;
    # truth -2: 0.05 -> 0.9; truth 4 has some token but no probability -> P(T <= 4) = 0.85, P(T >= 4) = 0.15
    read = TimelapseReadout(vocab).read(logits, np.array([0.0, 5.0, -2.0, 4.0]))
    np.testing.assert_allclose(read.needed, [0.0, 0.7, 0.9, 0.7], atol=1e-6)
    for truth, needed in ((5.0, read.needed[1]), (-2.0, read.needed[2])):  # that share holds it, less does not
        held = TimelapseReadout(vocab, calibrated=needed).read(logits[:1])
        assert held.calibrated_low[0] <= truth <= held.calibrated_high[0]
        short = TimelapseReadout(vocab, calibrated=needed - 0.01).read(logits[:1])
        assert not short.calibrated_low[0] <= truth <= short.calibrated_high[0]
    outside = TimelapseReadout(vocab).read(logits[:1], np.array([50.0]))  # no token: no interval holds it
    assert outside.needed[0] == np.inf


@pytest.mark.parametrize("spread", [1.0, 4.0])  # the model's distributions too narrow, then too wide
def test_calibrating_the_share_reaches_the_nominal_coverage(spread):
    """Prompts whose model distribution is a Gaussian of sd ``spread`` around a centre, while the truth lies
    around the centre with sd 2 (rounded to the time tokens)."""
    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(1, 4)], max_time=80)
    readout_values = vocab.numeric_values[vocab.numeric_ids]
    rng = np.random.default_rng(0)

    def prompts(n):
        centre = rng.uniform(-50, 50, n)
        logits = torch.full((n, len(vocab)), -1e4, dtype=torch.float64)
        logits[:, torch.as_tensor(vocab.numeric_ids)] = torch.as_tensor(
            -0.5 * ((readout_values[None, :] - centre[:, None]) / spread) ** 2)
        return logits, np.round(centre + rng.normal(0, 2, n))

    logits, true = prompts(600)
    level = conformal_level(TimelapseReadout(vocab).read(logits, true).needed, 0.8)
    logits, true = prompts(10_000)  # new prompts, exchangeable with the calibration ones
    read = TimelapseReadout(vocab, nominal=0.8, calibrated=level).read(logits, true)
    raw = coverage(read.low, read.high, true)
    assert (raw < 0.7) if spread == 1.0 else (raw > 0.95)  # measured: 0.61 and 0.99
    assert coverage(read.calibrated_low, read.calibrated_high, true) == pytest.approx(0.8, abs=0.03)
    assert (level > 0.8) if spread == 1.0 else (level < 0.8)


def test_too_few_calibration_prompts_give_no_finite_share():
    assert conformal_level(np.zeros(3), 0.8) == np.inf
