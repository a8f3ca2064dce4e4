"""Intervals of predicted times: read off the model's distribution exactly, and calibrated to their nominal
coverage on simulated data."""

import numpy as np
import pytest
import torch

from maxtoki.inference.timelapse_readout import TimelapseReadout, conformal_level, coverage, leave_out_levels
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


def test_a_scored_prompt_is_calibrated_on_none_of_its_own_cells():
    """Each prompt's share: the conformal level of the calibration prompts and of the scored prompts with a known
    truth that share no cell with it; what a prompt or those sharing its cells needed never moves its own share."""
    rng = np.random.default_rng(0)
    cells = [set(rng.choice(30, 2, replace=False).tolist()) for _ in range(60)]
    needed = rng.uniform(0, 1, 60)
    needed[[3, 7]] = np.nan  # truth unknown: in no pool
    calibration = rng.uniform(0, 1, 20)
    levels = leave_out_levels(needed, cells, 0.8, calibration)
    for prompt in (0, 3, 41):
        apart = [i for i in range(60) if not cells[i] & cells[prompt] and not np.isnan(needed[i])]
        assert levels[prompt] == conformal_level(np.concatenate([calibration, needed[apart]]), 0.8)
        moved = needed.copy()
        moved[[i for i in range(60) if cells[i] & cells[prompt]]] = 1.0  # its own and its cells' prompts
        assert leave_out_levels(moved, cells, 0.8, calibration)[prompt] == levels[prompt]
    # by donor: one unit per prompt
    donors = [{i % 4} for i in range(60)]
    by_donor = leave_out_levels(needed, donors, 0.8, calibration[:0])
    assert by_donor[1] == conformal_level(needed[[i for i in range(60) if i % 4 != 1 and i not in (3, 7)]], 0.8)


def test_kept_distributions_give_each_row_the_interval_of_its_own_share():
    vocab = Vocabulary.build(["G1"], max_time=3)  # time tokens -3..2
    logits = torch.full((2, len(vocab)), -1e9)
    logits[:, vocab.numeric_ids] = torch.log(torch.tensor([[0.05, 0.1, 0.2, 0.3, 0.2, 0.15],
                                                           [0.0, 0.0, 0.5, 0.5, 0.0, 0.0]]).clamp(min=1e-30))
    readout = TimelapseReadout(vocab)
    kept = readout.read(logits, keep=True)
    low, high = readout.central(kept.cumulative, np.array([0.5, 0.2]))
    for row, share in enumerate((0.5, 0.2)):
        alone = TimelapseReadout(vocab, calibrated=share).read(logits[row:row + 1])
        assert (low[row], high[row]) == (alone.calibrated_low[0], alone.calibrated_high[0])
    assert (low[0], high[0]) == (-1, 1) and readout.read(logits).cumulative is None


def test_calibrated_shares_of_zero_and_one_give_one_token_and_the_whole_range():
    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(1, 4)], max_time=10)
    logits = torch.full((1, len(vocab)), -1e4)
    logits[0, vocab.time_token(3)] = 0.0  # all mass on one time
    point = TimelapseReadout(vocab, calibrated=0.0).read(logits, np.array([3.0]))
    assert (point.calibrated_low[0], point.calibrated_high[0]) == (3, 3) and point.needed[0] == 0.0
    whole = TimelapseReadout(vocab, calibrated=1.0).read(torch.zeros((1, len(vocab))))
    assert (whole.calibrated_low[0], whole.calibrated_high[0]) == (-10, 9)
    with pytest.raises(ValueError, match="calibrated share"):
        TimelapseReadout(vocab, calibrated=1.5)


class Oracle(torch.nn.Module):
    """A stand-in stage-2 model whose distribution at ``<eoq>`` is all on the true Δ (``exact``) or flat over the
    time tokens (``unsure``); the truth is looked up by prompt."""

    def __init__(self, vocab: Vocabulary, truths: dict[bytes, int], mode: str):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(vocab_size=len(vocab), max_position_embeddings=4096,
                                      maxtoki={"objective": "temporal"})
        self.vocab, self.truths, self.mode = vocab, truths, mode

    def forward(self, input_ids, attention_mask, logits_to_keep):
        """Logits at the positions ``logits_to_keep`` (a tensor of positions, as Hugging Face models take it)."""
        from types import SimpleNamespace

        logits = torch.full((*input_ids.shape, len(self.vocab)), -1e4)
        numeric = torch.as_tensor(self.vocab.numeric_ids)
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            last = int(mask.sum()) - 1
            if self.mode == "unsure":
                logits[row, last, numeric] = 0.0
            else:
                truth = self.truths[ids[:last + 1].numpy().astype(np.int64).tobytes()]
                logits[row, last, self.vocab.time_token(truth)] = 0.0
        return SimpleNamespace(logits=logits[:, logits_to_keep])


@pytest.fixture(scope="module")
def simulated_prompts(tmp_path_factory):
    """Simulated donors: training paragraphs, and evaluation prompts of test and validation donors."""
    from maxtoki.cli import main

    def cli(*argv):
        assert main([str(a) for a in argv]) == 0

    root = tmp_path_factory.mktemp("calibration")
    cli("data", "simulate", "--out", root / "sim.h5ad", "--donors", 12, "--ages-per-donor", 3, "--cells-per-sample",
        3, "--genes", 60, "--seed", 5)
    cli("data", "medians", root / "sim.h5ad", "--out", root / "m.json")
    cli("data", "vocab", "--medians", root / "m.json", "--out", root / "v.json", "--max-time", 100)
    cli("data", "tokenize", root / "sim.h5ad", "--vocab", root / "v.json", "--medians", root / "m.json",
        "--out", root / "cells", "--time-column", "age", "--group-columns", "donor", "--model-input-size", 16)
    split = ["--split", "train=0.5,test=0.25,val=0.25", "--time-scale", 1 / 12]
    cli("data", "paragraphs", root / "cells", "--out", root / "p", "--num-examples", 100, *split)
    cli("data", "paragraphs", root / "cells", "--out", root / "eval", "--num-examples", 200, "--eval", *split)
    cli("data", "paragraphs", root / "cells", "--out", root / "few", "--num-examples", 8, "--eval", *split)
    return root, Vocabulary.load(root / "v.json")


def oracle(root, vocab, mode):
    from maxtoki.data.paragraphs.cell_store import CellStore

    truths = {np.asarray(e["prompt_ids"]).astype(np.int64).tobytes(): int(e["timelapse"])
              for split in ("eval/test", "eval/val", "few/val") for e in CellStore(str(root / split)) if int(e["task"]) == 1}
    return Oracle(vocab, truths, mode)


@pytest.mark.parametrize("mode", ["exact", "unsure"])
def test_calibration_holds_a_model_that_is_exactly_right_and_one_that_is_uniformly_unsure(simulated_prompts,
                                                                                         tmp_path, mode):
    """A model with all its mass on every calibration prompt's truth calibrates to a share of 0 (intervals of one
    token), one with a flat distribution to a wide share; both write their predictions."""
    import json

    import pandas as pd

    from maxtoki.inference.predict_time import predict_time

    root, vocab = simulated_prompts
    metrics = predict_time(oracle(root, vocab, mode), str(root / "eval/test"), tmp_path, train_data=str(root / "p/train"),
                           calibration_data=str(root / "eval/val"))
    table = pd.read_csv(tmp_path / "predictions.csv")
    true = table["true_timelapse"].to_numpy(dtype=float)
    assert json.loads((tmp_path / "metrics.json").read_text())["calibrated"]["share"] == metrics["calibrated"]["share"]
    if mode == "exact":
        assert metrics["model"]["mae"] == 0.0 and metrics["calibrated"]["share"] == 0.0
        np.testing.assert_array_equal(table["calibrated_low"], true)
        np.testing.assert_array_equal(table["calibrated_high"], true)
        assert metrics["calibrated"]["coverage"] == 1.0
    else:
        values = vocab.numeric_values[vocab.numeric_ids]
        assert metrics["model"]["mae"] == pytest.approx(np.abs(values.mean() - true).mean())
        assert 0 < metrics["calibrated"]["share"] < 1
        assert metrics["calibrated"]["coverage"] >= 0.7  # exchangeable donors: near the nominal 0.8


def test_calibration_data_too_small_to_calibrate_leaves_the_predictions_written_with_a_warning(simulated_prompts,
                                                                                                tmp_path):
    """The pipeline's mode (``calibration_failure="warn"``): what the model measured is written, uncalibrated; the
    command's mode stops with the reason before writing anything."""
    from maxtoki.errors import MaxtokiError
    from maxtoki.inference.predict_time import predict_time

    root, vocab = simulated_prompts
    few = root / "few" / "val"  # 80% intervals need at least 4 calibration prompts
    with pytest.raises(MaxtokiError, match="too few to calibrate"):
        predict_time(oracle(root, vocab, "exact"), str(root / "eval/test"), tmp_path / "strict",
                     calibration_data=str(few))
    assert not (tmp_path / "strict").exists()
    metrics = predict_time(oracle(root, vocab, "exact"), str(root / "eval/test"), tmp_path / "warn",
                           calibration_data=str(few), calibration_failure="warn")
    assert "calibrated" not in metrics and "intervals not calibrated" in metrics["warning"]
    assert (tmp_path / "warn" / "predictions.csv").exists() and metrics["model"]["mae"] == 0.0


def _random_model_and_prompts(count: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(1, 9)], max_time=10)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32)).eval()
    rng = np.random.default_rng(0)
    genes = vocab.gene_ids
    prompts = [{"prompt_ids": np.concatenate([[vocab.bos_id], rng.permutation(genes)[:4], [vocab.eos_id, vocab.boq_id,
                                              vocab.bos_id], rng.permutation(genes)[:3], [vocab.eos_id, vocab.eoq_id]]),
                "timelapse": int(rng.integers(-6, 7))} for _ in range(count)]
    return model, prompts, vocab


def test_distributions_kept_on_disk_give_the_same_intervals_and_leave_no_file(tmp_path, monkeypatch):
    import maxtoki.inference.timelapse_readout as readout_module
    from maxtoki.inference.predict_time import predict

    model, prompts, vocab = _random_model_and_prompts(11)
    in_memory = predict(model, prompts, vocab, batch_size=4, keep=True)
    on_disk = predict(model, prompts, vocab, batch_size=4, keep=True, keep_on_disk=tmp_path)
    assert isinstance(on_disk.cumulative, np.memmap) and not isinstance(in_memory.cumulative, np.memmap)
    np.testing.assert_array_equal(on_disk.cumulative, in_memory.cumulative)
    for field in ("expected", "argmax", "low", "high", "needed"):
        np.testing.assert_array_equal(getattr(on_disk, field), getattr(in_memory, field))
    assert list(tmp_path.iterdir()) == []  # the file has no name: nothing to clean up, even after a kill
    shares = np.linspace(0.0, 1.0, len(prompts))
    whole = TimelapseReadout(vocab).central(in_memory.cumulative, shares)
    monkeypatch.setattr(readout_module, "CENTRAL_BLOCK", 3)  # read a few rows at a time, as a large file is
    blocks = TimelapseReadout(vocab).central(on_disk.cumulative, shares)
    for a, b in zip(whole, blocks):
        np.testing.assert_array_equal(a, b)
    assert (whole[0][-1], whole[1][-1]) == (-10, 9)  # a share of 1: the whole range


def test_no_room_for_the_kept_distributions_is_one_clear_error_and_leaves_nothing(tmp_path):
    from maxtoki.errors import MaxtokiError
    from maxtoki.inference.predict_time import _distribution_file

    kept = _distribution_file(tmp_path, 3, 20)
    assert kept.shape == (3, 20) and list(tmp_path.iterdir()) == []
    with pytest.raises(MaxtokiError, match=f"{tmp_path}: no room for the .* GB of distributions .* free some"):
        _distribution_file(tmp_path, 10 ** 12, 3000)  # 24 PB
    assert list(tmp_path.iterdir()) == []
