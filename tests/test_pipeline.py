"""`maxtoki pipeline`: bad time courses refused in one line before anything is written; as the guard of the
default run, a model trained on the bundled HSMM time course that places held-out cells in time better than the
paper's naive and linear baselines, where a model that predicts a constant fails the same check; and (slow) the
demo's settings at three seeds against the promises of the README."""

import json

import numpy as np
import pytest
from conftest import make_adata
from helpers.split_cells import cells_and_donors

from maxtoki.cli import main as cli_main


def refused(capsys, *argv) -> str:
    assert cli_main([str(a) for a in argv]) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0, message  # one line
    return message


@pytest.mark.parametrize("obs, column, message", [
    ({"hours": [0, 0, 24, 24]}, "day", "no time, group or baseline column 'day' in obs; the columns are: hours"),
    ({"hours": ["early", "early", "late", "late"]}, "hours", "obs column 'hours' must be numeric"),
    ({"hours": [24, 24, 24, 24]}, "hours", "has 1 distinct time(s) (after --time-scale); a time course needs at "
                                            "least two"),
    ({"hours": [0, 0, 24, 24]}, "hours", "too few cells to hold any out: 4 cells with a time, at most 2 per time "
                                          "point"),
])
def test_bad_time_courses_are_refused_before_anything_is_written(tmp_path, capsys, obs, column, message):
    path = tmp_path / "course.h5ad"
    make_adata(np.arange(1, 13).reshape(4, 3), obs=obs).write_h5ad(path)
    error = refused(capsys, "pipeline", path, "--time-column", column, "--out", tmp_path / "out")
    assert f"{path}" in error and message in error
    assert not (tmp_path / "out").exists()


def test_training_sizes_follow_the_time_course_unless_given():
    from maxtoki.pipeline import SMALL_COURSE, PipelineOptions, sized

    cpu, sizing = sized(PipelineOptions("hours"), SMALL_COURSE)
    assert sizing.name == "CPU-sized"
    assert (cpu.cell_length, cpu.pretrain_cell_length, cpu.pretrain_batches, cpu.temporal_batches, cpu.examples) == \
        (1024, 256, 0, 350, 4000)
    gpu, sizing = sized(PipelineOptions("hours"), SMALL_COURSE + 1)
    assert sizing.name == "GPU-sized"
    assert (gpu.cell_length, gpu.pretrain_cell_length, gpu.pretrain_batches, gpu.temporal_batches, gpu.examples) == \
        (4096, 4096, 2000, 4000, 20000)
    given, _ = sized(PipelineOptions("hours", cell_length=128, temporal_batches=7), SMALL_COURSE + 1)
    assert (given.cell_length, given.pretrain_cell_length, given.temporal_batches, given.pretrain_batches) == \
        (128, 128, 7, 2000)  # stage 1 never reads more than the cells hold


def learned_time(metrics: dict) -> bool:
    """The guard: held-out MAE at most 0.85 x the paper's naive baseline's and 0.8 x the training mean's, below the
    linear regressor's, Pearson r at least 0.5. Measured at the guard's size (256-token cells, no stage 1, 400
    stage-2 batches): 14.2 h, r 0.90, against the naive baseline's 23.2 (0.61 x), the linear regressor's 24.9, the
    training mean's 40.7 and the ceiling's 14.8."""
    model = metrics["model"]
    return (model["mae"] <= 0.85 * metrics["baseline_most_common_time"]["mae"]
            and model["mae"] <= 0.8 * metrics["baseline_training_mean"]["mae"]
            and model["mae"] < metrics["baseline_linear"]["mae"] and model["pearson_r"] >= 0.5)


def test_pipeline_learns_time_on_the_bundled_time_course(tmp_path, capsys, hsmm_path):
    """The README's command on the bundled data, at a size that trains in a few minutes: 256-token cells, stage 2
    alone from gene embeddings from the cells."""
    out = tmp_path / "hsmm"
    assert cli_main(["pipeline", str(hsmm_path), "--time-column", "hours", "--out", str(out), "--allow-non-integer",
                     "--min-expression", "0.1", "--cell-length", "256", "--pretrain-batches", "0",
                     "--temporal-batches", "400"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "predictions" / "metrics.json").read_text())
    with capsys.disabled():
        print(f"\nHSMM held-out cells: model MAE {metrics['model']['mae']:.1f} h, r {metrics['model']['pearson_r']:.2f}; "
              f"training mean {metrics['baseline_training_mean']['mae']:.1f}, linear "
              f"{metrics['baseline_linear']['mae']:.1f} (r {metrics['baseline_linear']['pearson_r']:.2f}); "
              f"{metrics['pipeline']['seconds']} s")
    assert learned_time(metrics), metrics["model"]
    assert metrics["warning"] is None
    assert metrics["pipeline"]["max_time"] == 91  # the data's largest Δ, 72 h, with a quarter to spare
    assert f"Time between two held-out cells, {metrics['examples']} prompts (hours)" in printed
    assert "The model beats" in printed and "baseline: most common time of kind" in printed
    # the intervals are calibrated on validation cells that neither trained nor score the model
    calibrated = metrics["calibrated"]
    assert calibrated["from"] == str(out / "eval" / "validation") and calibrated["prompts"] >= 50
    assert calibrated["coverage"] >= 0.7  # the raw intervals hold the truth for about half the prompts
    assert (f"calibrated on {calibrated['prompts']} other held-out prompts and the scored prompts of other cells: "
            f"{calibrated['coverage']:.0%}") in printed
    splits = json.loads((out / "paragraphs" / "splits.json").read_text())
    assert splits["validation_fraction"] == 0.1 and splits["holdout_fraction"] == 0.2
    # the prompts, built apart from the training paragraphs, score and calibrate on cells it never trained on
    trained = cells_and_donors(out / "cells", out / "paragraphs" / "train")[0]
    scored = cells_and_donors(out / "cells", out / "eval" / "holdout")[0]
    calibrating = cells_and_donors(out / "cells", out / "eval" / "validation")[0]
    assert len(scored) >= 40 and len(calibrating) >= 20 and len(trained) >= 150
    assert trained.isdisjoint(scored | calibrating) and scored.isdisjoint(calibrating)
    assert (out / "predictions" / "predicted_vs_true.png").stat().st_size > 10_000
    assert (out / "hf-model" / "config.json").exists()
    # the guard fails a model that has not learned: the same model, untrained
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    from maxtoki.inference.predict_time import predict_time

    LlamaForCausalLM(LlamaConfig.from_pretrained(out / "hf-model")).save_pretrained(tmp_path / "untrained-model")
    shutil.copy(out / "hf-model" / "vocab.json", tmp_path / "untrained-model")
    untrained = predict_time(str(tmp_path / "untrained-model"), str(out / "eval" / "holdout"), tmp_path / "untrained",
                             train_data=str(out / "paragraphs" / "train"))
    assert not learned_time(untrained), untrained["model"]
    assert untrained["warning"] is not None  # and predict time says it predicts nearly a constant


def test_pipeline_from_an_imported_release_skips_stage_1_and_encodes_as_released(tmp_path, capsys, hsmm_path):
    """--pretrained: no stage 1, the model's (released) vocabulary and the released medians, stage 2 from the
    model's weights with RoPE left as it is (the paragraphs fit its context), a stage-2 model out."""
    from helpers.released import released_config, write_release
    from transformers import LlamaForCausalLM

    from maxtoki.released import released_medians, released_vocabulary
    from maxtoki.vocab import Vocabulary

    write_release(tmp_path / "release", released_config(hidden=64, layers=2, heads=4))
    assert cli_main(["import-hf", str(tmp_path / "release"), "--out", str(tmp_path / "model")]) == 0
    bad = refused(capsys, "pipeline", hsmm_path, "--time-column", "hours", "--pretrained", tmp_path / "release",
                  "--out", tmp_path / "x", "--allow-non-integer")
    assert "not a model directory" in bad and "import-hf" in bad and not (tmp_path / "x").exists()
    out = tmp_path / "run"
    assert cli_main(["pipeline", str(hsmm_path), "--time-column", "hours", "--allow-non-integer", "--min-expression",
                     "0.1", "--pretrained", str(tmp_path / "model"), "--cell-length", "32", "--temporal-batches", "20",
                     "--examples", "200", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stage 1: skipped" in printed and "the released gene medians (bundled)" in printed
    assert not (out / "runs" / "pretrain").exists()
    assert Vocabulary.load(out / "vocab.json").sha256 == released_vocabulary().sha256
    assert json.loads((out / "medians.json").read_text()) == released_medians()
    metrics = json.loads((out / "predictions" / "metrics.json").read_text())
    assert metrics["stage2_evaluation"]["NextGeneCrossEntropy"] > 0 and metrics["examples"] > 0
    exported = json.loads((out / "hf-model" / "maxtoki.json").read_text())
    assert exported["time_tokens_trained"] is True and exported["rope_scaling"] is None
    model = LlamaForCausalLM.from_pretrained(out / "hf-model")
    assert model.config.vocab_size == 23_296 and model.config.max_position_embeddings == 72
    # another vocabulary than the released one needs its medians
    other = tmp_path / "other"
    (other).mkdir()
    for name in ("config.json", "model.safetensors", "maxtoki.json"):
        (other / name).write_bytes((tmp_path / "model" / name).read_bytes())
    vocab = json.loads((tmp_path / "model" / "vocab.json").read_text())
    (other / "vocab.json").write_text(json.dumps({**vocab, "ENSGX": max(vocab.values()) + 1}))
    assert "give --medians" in refused(capsys, "pipeline", hsmm_path, "--time-column", "hours", "--pretrained",
                                       other, "--out", tmp_path / "y", "--allow-non-integer")


@pytest.fixture(scope="module")
def donors_h5ad(tmp_path_factory) -> str:
    """8 simulated donors x 3 ages (240-960 months) x 8 cells of 2 cell types, 200 genes."""
    path = tmp_path_factory.mktemp("donors") / "donors.h5ad"
    assert cli_main(["--quiet", "data", "simulate", "--out", str(path), "--donors", "8", "--ages-per-donor", "3",
                     "--cells-per-sample", "8", "--genes", "200", "--cell-types", "2"]) == 0
    return str(path)


def checkpoint_state(path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["state"]


def test_every_pipeline_option_takes_effect(tmp_path, capsys, donors_h5ad):
    """The options of `maxtoki pipeline` that the guard leaves at their defaults, each checked by what it changes
    in the outputs (two tiny runs: whole donors dealt by --split, then named donors held out without stage 1)."""
    import anndata as ad

    from maxtoki.data.paragraphs.cell_store import CellStore
    from maxtoki.data.paragraphs.sampling import to_time_units
    from maxtoki.model.sizes import SIZES

    obs = ad.read_h5ad(donors_h5ad, backed="r").obs
    out = tmp_path / "split"
    assert cli_main(["--quiet", "pipeline", donors_h5ad, "--time-column", "age", "--out", str(out),
                     "--group-columns", "donor", "--split", "train=0.5,val=0.25,test=0.25", "--time-scale", "0.1",
                     "--baseline-columns", "cell_type", "--set", "global_train_batch_size=4",
                     "device_train_microbatch_size=4", "--model-size", "tiny", "--examples", "60",
                     "--pretrain-batches", "3", "--temporal-batches", "5", "--seed", "5", "--cell-length", "48"]) == 0
    splits = json.loads((out / "paragraphs" / "splits.json").read_text())
    # --split deals whole donors (--group-columns donor) into the named splits; --seed picks which
    assert splits["split"] == {"train": 0.5, "val": 0.25, "test": 0.25} and splits["seed"] == 5
    assert sorted(map(len, splits["groups"].values())) == [2, 2, 4]
    assert sorted(sum(splits["groups"].values(), [])) == sorted(obs["donor"].unique())
    metrics = json.loads((out / "predictions" / "metrics.json").read_text())
    scored = {str(e["group"]) for e in CellStore(str(out / "eval" / "test"))}
    assert scored == set(splits["groups"]["test"]) and metrics["examples"] == len(CellStore(str(out / "eval" / "test")))
    assert metrics["calibrated"]["from"] == str(out / "eval" / "val")
    # --time-scale 0.1: ages 240-960 months become 24-96 time tokens
    ages = set(to_time_units(obs["age"].to_numpy(dtype=float), 0.1).tolist())
    times = {int(t) for e in CellStore(str(out / "paragraphs" / "train")) for t in e["times"]}
    assert times <= ages and len(times) >= 3 and max(times) <= 96
    assert metrics["baseline_most_common_time_fit"]["columns"] == ["cell_type"]  # --baseline-columns
    assert len(CellStore(str(out / "paragraphs" / "train"))) == 30  # --examples 60, dealt to the splits by share
    stage1, stage2 = (checkpoint_state(out / "runs" / stage / "latest-rank0.pt") for stage in ("pretrain", "temporal"))
    # --pretrain-batches, --temporal-batches, and --set reaching both stages: 4 samples a batch (16 and 8 in recipes)
    assert (stage1["timestamp"]["Timestamp"]["batch"], stage1["timestamp"]["Timestamp"]["sample"]) == (3, 12)
    assert (stage2["timestamp"]["Timestamp"]["batch"], stage2["timestamp"]["Timestamp"]["sample"]) == (5, 20)
    assert stage1["rank_zero_seed"] == stage2["rank_zero_seed"] == 5  # --seed reaches training too
    config = json.loads((out / "hf-model" / "config.json").read_text())
    assert config["hidden_size"] == SIZES["tiny"]["hidden_size"]  # --model-size
    assert max(len(e["input_ids"]) for e in CellStore(str(out / "cells"))) == 48  # --cell-length

    named = ["donor001", "donor006"]
    held = tmp_path / "held"
    assert cli_main(["--quiet", "pipeline", donors_h5ad, "--time-column", "age", "--out", str(held),
                     "--group-columns", "donor", "--holdout-groups", *named, "--time-scale", "0.1",
                     "--examples", "40", "--pretrain-batches", "0", "--temporal-batches", "2",
                     "--cell-length", "48"]) == 0
    # --pretrain-batches 0: no stage 1, stage 2 from scratch
    assert not (held / "runs" / "pretrain").exists() and not (held / "pretrain-cells").exists()
    assert checkpoint_state(held / "runs" / "temporal" / "latest-rank0.pt")["timestamp"]["Timestamp"]["batch"] == 2
    splits = json.loads((held / "paragraphs" / "splits.json").read_text())
    assert splits["holdout_groups"] == named and splits["groups"]["holdout"] == named
    assert {str(e["group"]) for e in CellStore(str(held / "eval" / "holdout"))} == set(named)
    assert not {str(e["group"]) for e in CellStore(str(held / "paragraphs" / "train"))} & set(named)


@pytest.mark.slow
def test_the_demo_beats_the_naive_baseline_near_the_ceiling_at_three_seeds(tmp_path, hsmm_path):
    """The demo's command (the pipeline's defaults on the bundled time course) at seeds 0, 1 and 2, against what the
    README promises: MAE at most 0.75 x the paper's naive baseline and 1.5 x the ceiling, Pearson r at least 0.9,
    calibrated 80% intervals within 0.1 of 80%, at most 10 minutes of pipeline time (2 CPU cores)."""
    for seed in (0, 1, 2):
        out = tmp_path / f"seed{seed}"
        assert cli_main(["--quiet", "pipeline", str(hsmm_path), "--time-column", "hours", "--allow-non-integer",
                         "--min-expression", "0.1", "--seed", str(seed), "--out", str(out)]) == 0
        metrics = json.loads((out / "predictions" / "metrics.json").read_text())
        model = metrics["model"]
        print(f"\nseed {seed}: MAE {model['mae']:.1f} h, r {model['pearson_r']:.3f}; naive "
              f"{metrics['baseline_most_common_time']['mae']:.1f}, ceiling {metrics['baseline_ceiling']['mae']:.1f}; "
              f"calibrated coverage {metrics['calibrated']['coverage']:.2f}; {metrics['pipeline']['seconds']} s")
        assert model["mae"] <= 0.75 * metrics["baseline_most_common_time"]["mae"], seed
        assert model["mae"] <= 1.5 * metrics["baseline_ceiling"]["mae"], seed
        assert model["pearson_r"] >= 0.9, seed
        assert abs(metrics["calibrated"]["coverage"] - 0.8) <= 0.1, seed
        assert metrics["pipeline"]["seconds"] <= 600, seed
