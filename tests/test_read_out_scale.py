"""``model.label_scalar: auto`` and ``model.time_smoothing: auto``: the stage-2 read-out scale comes from the training
paragraphs' time points, so that the shipped recipe suits hours as well as months (a fixed 200 on a course measured
in hours made the model predict a constant)."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from maxtoki.data.paragraphs.blueprint import Blueprint
from maxtoki.errors import MaxtokiError
from maxtoki.model.read_out_scale import paragraph_time_points, read_out_scale, resolve_read_out_scale


def write_paragraphs(directory, times) -> str:
    """A paragraph directory as far as the read-out scale reads it: its blueprint, pairs of cells at ``times``."""
    directory.mkdir()
    times = np.asarray(times, dtype=np.int64)
    pairs = len(times) // 2
    blueprint = Blueprint(offsets=np.arange(0, len(times) + 1, 2), cell_indices=np.arange(len(times)), times=times,
                          tasks=np.ones(pairs, dtype=np.int8), groups=np.zeros(pairs, dtype=np.int64),
                          group_names=["course"])
    (directory / "blueprint.npz").write_bytes(blueprint.to_bytes())
    return str(directory)


def recipe(data: str, **model) -> OmegaConf:
    return OmegaConf.create({"model": {"name": "maxtoki_temporal", **model},
                             "train_loader": {"dataset": {"remote": data}}})


def test_the_scale_is_the_spread_of_the_distinct_time_points(tmp_path):
    data = write_paragraphs(tmp_path / "p", [0, 72, 24, 0, 48, 24, 72, 48])
    assert paragraph_time_points(data).tolist() == [0, 24, 48, 72]
    # the standard deviation of 0, 24, 48, 72 (each time once, however many cells it has)
    assert read_out_scale([0, 0, 0, 24, 48, 72]) == pytest.approx(np.sqrt((36**2 + 12**2) * 2 / 4))
    assert read_out_scale([5, 5]) == 1.0  # one time point: at least one time unit


def test_auto_takes_the_training_paragraphs_and_smoothing_half_of_it(tmp_path):
    cfg = recipe(write_paragraphs(tmp_path / "p", [0, 24, 48, 72]), label_scalar="auto", time_smoothing="auto")
    resolve_read_out_scale(cfg)
    assert cfg.model.label_scalar == pytest.approx(26.8328, abs=1e-4)
    assert cfg.model.time_smoothing == pytest.approx(26.8328 / 2, abs=1e-4)


def test_numbers_stay_and_smoothing_follows_a_given_scale(tmp_path):
    cfg = recipe(str(tmp_path / "nowhere"), label_scalar=200.0, time_smoothing=0.0)
    resolve_read_out_scale(cfg)  # nothing to read: the paragraphs are not opened
    assert (cfg.model.label_scalar, cfg.model.time_smoothing) == (200.0, 0.0)
    cfg = recipe(str(tmp_path / "nowhere"), label_scalar=20, time_smoothing="auto")
    resolve_read_out_scale(cfg)
    assert cfg.model.time_smoothing == 10.0


@pytest.mark.parametrize("model, message", [
    ({"label_scalar": "atuo"}, "model.label_scalar 'atuo': give a number (time units) or auto"),
    ({"label_scalar": 20, "time_smoothing": "half"}, "model.time_smoothing 'half': give a number (time units) or auto"),
    ({"label_scalar": "auto"}, "blueprint.npz: cannot read the paragraphs' time points for model.label_scalar auto"),
])
def test_a_wrong_value_or_paragraphs_without_a_blueprint_say_which_key(tmp_path, model, message):
    (tmp_path / "p").mkdir()
    with pytest.raises(MaxtokiError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_read_out_scale(recipe(str(tmp_path / "p"), **model))


def test_a_model_built_alone_refuses_auto_with_the_reason(tmp_path):
    from maxtoki.model.composer_model import MaxTokiTemporalModel

    with pytest.raises(MaxtokiError, match="read from the training paragraphs by train_from_recipe"):
        MaxTokiTemporalModel(size="tiny", vocab=str(tmp_path / "vocab.json"), label_scalar="auto")
