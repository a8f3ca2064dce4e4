"""Both training stages for real on CPU at tiny size, from the bundled example; recipe checks."""

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tokenize_hsmm

from maxtoki.cli import main as cli_main
from maxtoki.training import main as train_main
from maxtoki.training import train_from_recipe

ROOT = Path(__file__).resolve().parent.parent
PRETRAIN = str(ROOT / "configs/pretrain/tiny-cpu.yaml")
TEMPORAL = str(ROOT / "configs/temporal/tiny-cpu.yaml")


def cli(*argv):
    assert cli_main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def hsmm_data(tmp_path_factory, hsmm_path, hsmm_reference):
    """HSMM cells cut to 128 tokens and paragraphs of up to 512 tokens (4 x 128), as in the demo."""
    vocab, medians = hsmm_reference
    root = tmp_path_factory.mktemp("train_data")
    tokenize_hsmm(hsmm_path, vocab, medians, root / "cells", 128)
    cli("data", "paragraphs", root / "cells", "--out", root / "paragraphs", "--num-examples", 200,
        "--max-seq-len", 512)
    return {"vocab": str(vocab), "cells": str(root / "cells"), "paragraphs": str(root / "paragraphs")}


def losses(trainer, key="loss/train/total"):
    from composer.loggers import InMemoryLogger

    logger = next(d for d in trainer.logger.destinations if isinstance(d, InMemoryLogger))
    return np.array([float(value) for _, value in logger.data[key]])


def common(tmp, name, batches):
    return [f"variables.run_name={name}", f"save_folder={tmp / name}", f"max_duration={batches}ba",
            f"eval_interval={batches}ba", f"save_interval={batches}ba", "loggers={inmemory: {}}",
            "global_train_batch_size=8", "device_train_microbatch_size=8", "eval_subset_num_batches=2",
            "console_log_interval=100ba"]


class Terminal(io.StringIO):
    """stderr as a terminal: progress is drawn as a bar."""

    def isatty(self) -> bool:
        return True


PRINTED: dict[str, str] = {}  # what each training fixture's run printed to stderr


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, hsmm_data):
    tmp = tmp_path_factory.mktemp("stage1")
    with contextlib.redirect_stderr(Terminal()) as printed:
        trainer = train_from_recipe(PRETRAIN, [f"variables.data={hsmm_data['cells']}",
                                               f"variables.vocab={hsmm_data['vocab']}", "max_seq_len=128",
                                               "optimizer.lr=0.01", *common(tmp, "p", 16)])
    PRINTED["stage1"] = printed.getvalue()
    return trainer, tmp / "p" / "latest-rank0.pt"


def test_stage1_trains_and_loss_falls(stage1):
    trainer, checkpoint = stage1
    values = losses(trainer)
    assert len(values) == 16 and np.isfinite(values).all()
    assert values[-4:].mean() < values[:4].mean() - 0.5
    assert checkpoint.exists()
    metrics = {k: float(v) for k, v in trainer.state.eval_metric_values.items()}
    assert metrics["NextGeneCrossEntropy"] < np.log(29_000)
    assert metrics["NextGenePerplexity"] == pytest.approx(np.exp(metrics["NextGeneCrossEntropy"]), rel=1e-4)


def test_rerunning_a_finished_run_is_a_no_op(stage1, hsmm_data, capsys):
    _, checkpoint = stage1
    before = checkpoint.resolve().read_bytes()
    assert train_from_recipe(PRETRAIN, [f"variables.data={hsmm_data['cells']}", f"variables.vocab={hsmm_data['vocab']}",
                                        "max_seq_len=128", "optimizer.lr=0.01",
                                        *common(checkpoint.parent.parent, "p", 16)]) is None
    assert "has already trained for max_duration (16ba); nothing to do" in capsys.readouterr().out
    assert checkpoint.resolve().read_bytes() == before


def stage2_args(hsmm_data, checkpoint):
    return [f"variables.data={hsmm_data['paragraphs']}", f"variables.vocab={hsmm_data['vocab']}",
            f"variables.pretrained={checkpoint}", "max_seq_len=512",
            "model.rope_scaling.original_max_position_embeddings=128",
            # the read-out these mechanics tests were measured with: time tokens of ±1,500 (the released range),
            # for which the recipe's auto scale (26.8 h) made 16 batches too few for the loss to fall
            "model.label_scalar=200", "model.time_smoothing=0"]


@pytest.fixture(scope="module")
def stage2(tmp_path_factory, stage1, hsmm_data):
    tmp = tmp_path_factory.mktemp("stage2")
    with contextlib.redirect_stderr(io.StringIO()) as printed:  # a log file: progress as lines
        trainer = train_from_recipe(TEMPORAL, [*stage2_args(hsmm_data, stage1[1]), "optimizer.lr=0.01",
                                               *common(tmp, "t", 16)])
    PRINTED["stage2"] = printed.getvalue()
    return trainer, tmp / "t" / "latest-rank0.pt"


def test_stage2_starts_from_stage1_and_loss_falls(tmp_path, stage1, stage2, hsmm_data):
    _, checkpoint = stage1
    # with a learning rate of 0 the weights stay exactly the stage-1 weights: the checkpoint was loaded
    frozen = train_from_recipe(TEMPORAL, [*stage2_args(hsmm_data, checkpoint), "optimizer.lr=0",
                                          *common(tmp_path, "frozen", 1)])
    stage1_weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["model"]
    for name, value in frozen.state.model.state_dict().items():
        assert torch.equal(value, stage1_weights[name]), name
    assert frozen.state.model.model.config.rope_scaling["rope_type"] == "llama3"
    trainer, _ = stage2
    values = losses(trainer)
    assert len(values) == 16 and np.isfinite(values).all()
    assert values[-4:].mean() < values[:4].mean()
    assert np.isfinite(losses(trainer, "loss/train/time_between_cells")).all()
    metrics = {k: float(v) for k, v in trainer.state.eval_metric_values.items()}
    assert {"TimelapseMAE", "TimelapseMedianAE", "TimelapsePearson", "TimelapseSpread",
            "NextGeneCrossEntropy"} <= set(metrics)
    assert 0 <= metrics["TimelapseMAE"] < 200
    # collapse is visible while training: the spread of the distribution over times, next to the loss
    spread = losses(trainer, "metrics/train/TimelapseSpread")
    assert len(spread) == 16 and (spread[np.isfinite(spread)] > 0).all() and np.isfinite(spread).sum() >= 8


def recent_mean(values: np.ndarray, window: int = 10, skip_zeros: bool = False) -> float:
    recent = values[-window:]
    return float(recent[recent != 0].mean() if skip_zeros else recent.mean())


def test_training_in_a_log_shows_progress_lines_and_an_evaluation_summary_not_every_metric(stage2):
    trainer, _ = stage2
    printed = PRINTED["stage2"]
    assert not re.search(r"loss/train|metrics/|\[batch=|Config:|\r", printed)
    assert "maxtoki.model.builders" not in printed  # notices are not repeated by llm-foundry's root handler
    assert all(line.startswith("stage 2 ") for line in printed.splitlines()), printed
    progress = [line for line in printed.splitlines() if line.startswith("stage 2 batch ")]
    assert len(progress) == 10 and progress[-1].startswith("stage 2 batch 16/16 (100%), ")
    assert "elapsed, 00:00 left" in progress[-1]
    total, next_cell, time_between = map(float, re.search(
        r"; loss (\S+) \(NextCell (\S+), TimeBetweenCells (\S+)\)$", progress[-1]).groups())
    assert total == pytest.approx(recent_mean(losses(trainer)), abs=1.5e-3)  # the mean of the last 10 batches
    assert next_cell == pytest.approx(recent_mean(losses(trainer, "loss/train/next_cell"), skip_zeros=True),
                                      abs=1.5e-3)
    assert time_between == pytest.approx(recent_mean(losses(trainer, "loss/train/time_between_cells"),
                                                     skip_zeros=True), abs=1.5e-3)
    value = {k: float(v) for k, v in trainer.state.eval_metric_values.items()}
    summary = (f"stage 2 eval at batch 16/16: TimeBetweenCells: MAE {value['TimelapseMAE']:.1f}, median error "
               f"{value['TimelapseMedianAE']:.1f}, Pearson r {value['TimelapsePearson']:.2f}, spread "
               f"{value['TimelapseSpread']:.1f}; next gene: cross-entropy {value['NextGeneCrossEntropy']:.3f}, "
               f"accuracy {value['NextGeneAccuracy']:.3f}")
    assert summary in printed.splitlines()


def test_training_on_a_terminal_draws_one_bar_to_the_last_batch(stage1):
    trainer, _ = stage1
    printed = PRINTED["stage1"]
    assert not re.search(r"loss/train|metrics/|\[batch=|Config:", printed)
    drawn = re.split(r"[\r\n]", printed)
    assert printed.count("\n") == 2, printed  # redrawn in place: the evaluation's line and the finished bar
    bar = r"stage 1: 100%\|.*\| 16/16 \[\d\d:\d\d<00:00\], loss \d+\.\d{3}$"
    final = [text for text in drawn if re.match(bar, text)]
    assert final, printed[-500:]
    assert float(re.search(r"loss (\S+)$", final[-1]).group(1)) == pytest.approx(recent_mean(losses(trainer)),
                                                                                abs=1.5e-3)
    value = {k: float(v) for k, v in trainer.state.eval_metric_values.items()}
    assert (f"stage 1 eval at batch 16/16: next gene: cross-entropy {value['NextGeneCrossEntropy']:.3f}, "
            f"accuracy {value['NextGeneAccuracy']:.3f}") in drawn


def test_stage1_trains_on_packed_rows(tmp_path, hsmm_data):
    """``train_loader.dataset.packing_ratio`` packs the 128-token cells two to a 256-token row."""
    trainer = train_from_recipe(PRETRAIN, [f"variables.data={hsmm_data['cells']}",
                                           f"variables.vocab={hsmm_data['vocab']}", "max_seq_len=256",
                                           "train_loader.dataset.packing_ratio=auto", "optimizer.lr=0.01",
                                           *common(tmp_path, "packed", 12)])
    values = losses(trainer)
    assert len(values) == 12 and np.isfinite(values).all() and values[-3:].mean() < values[:3].mean()
    collate = trainer.state.train_dataloader.collate_fn
    assert collate.cells_in == 12 * 16 and collate.cells_dropped == 0  # 8 rows of two cells per batch


def test_stage2_after_meta_initialisation_holds_the_checkpoint_weights(stage1, hsmm_data):
    """The GPU recipes build the model on ``meta``; FSDP materialises it module by module, then Composer
    loads the stage-1 checkpoint: the result must be exactly the checkpoint, rotary frequencies included."""
    from composer import Trainer

    import maxtoki.model.registry  # noqa: F401
    from maxtoki.model.composer_model import MaxTokiTemporalModel
    from maxtoki.model.meta_init import materialize
    from maxtoki.model.read_out_scale import resolve_read_out_scale
    from maxtoki.training import load_recipe

    _, checkpoint = stage1
    cfg = load_recipe(TEMPORAL, stage2_args(hsmm_data, checkpoint))
    resolve_read_out_scale(cfg)  # as train_from_recipe does: the recipe's read-out scale is auto
    keys = dict(cfg.model)
    keys.pop("name")
    model = MaxTokiTemporalModel(**{**keys, "init_device": "meta"})
    materialize(model.model)
    trainer = Trainer(model=model, load_path=str(checkpoint), load_weights_only=True,
                      load_strict_model_weights=True, device="cpu", loggers=[], progress_bar=False)
    stage1_weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["model"]
    loaded = trainer.state.model.state_dict()
    assert set(loaded) == set(stage1_weights)
    for name, value in loaded.items():
        assert torch.equal(value, stage1_weights[name]), name
    on_host = MaxTokiTemporalModel(**keys)
    for (name, buffer), (_, expected) in zip(model.model.named_buffers(), on_host.model.named_buffers()):
        assert torch.equal(buffer, expected), name
    trainer.close()


@pytest.mark.parametrize("override, message", [
    ("model.size=3b", "unknown model size '3b'"),
    ("variables.data=/nowhere/cells", "/nowhere/cells: no such data"),
    ("variables.vocab=/nowhere/vocab.json", "no such file"),
    ("fsdp_confg={sharding_strategy: FULL_SHARD}", "unknown recipe key fsdp_confg; did you mean fsdp_config?"),
    ("+fsdp_config={sharding_strategy: FULL_SHARD}", "unknown recipe key +fsdp_config; did you mean fsdp_config?"),
    ("model.label_scaler=24", "unknown recipe key model.label_scaler; did you mean model.label_scalar?"),
    ("train_loader.dataset.packing_ratoi=auto",
     "unknown recipe key train_loader.dataset.packing_ratoi; did you mean train_loader.dataset.packing_ratio?"),
])
def test_bad_configuration_fails_fast(capsys, hsmm_data, override, message):
    code = train_main([PRETRAIN, f"variables.data={hsmm_data['cells']}", f"variables.vocab={hsmm_data['vocab']}",
                       override])
    error = capsys.readouterr().err
    assert code == 2 and message in error and error.count("\n") == 1  # one line


def test_vocabulary_mismatch_and_wrong_stage_fail_fast(capsys, tmp_path, hsmm_data, tiny_vocab):
    tiny_vocab.save(tmp_path / "other.json")
    assert train_main(["-f", PRETRAIN, f"variables.data={hsmm_data['cells']}",
                       f"variables.vocab={tmp_path / 'other.json'}"]) == 2
    assert "differs from model.vocab" in capsys.readouterr().err
    assert train_main([PRETRAIN, f"variables.data={hsmm_data['paragraphs']}",
                       f"variables.vocab={hsmm_data['vocab']}"]) == 2
    assert "holds maxtoki.paragraphs data" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("configs/*/*.yaml")
                                          if p.parent.name in ("pretrain", "temporal")))
def test_recipes_are_valid_llm_foundry_train_configs(recipe):
    from llmfoundry.utils.config_utils import TRAIN_CONFIG_KEYS, TrainConfig, make_dataclass_and_log_config

    from maxtoki.training import load_recipe

    cfg = load_recipe(str(ROOT / recipe), [])
    _, train_cfg = make_dataclass_and_log_config(cfg, TrainConfig, TRAIN_CONFIG_KEYS, transforms="all")
    assert train_cfg.model["name"] in ("maxtoki_pretrain", "maxtoki_temporal")
    if "cpu" not in recipe:
        assert train_cfg.precision == "amp_bf16" and train_cfg.device_train_microbatch_size == "auto"
        assert train_cfg.fsdp_config["sharding_strategy"] == "FULL_SHARD" and train_cfg.autoresume
        assert {"speed_monitor", "lr_monitor", "memory_monitor", "runtime_estimator",
                "prune_remote_checkpoints"} <= set(train_cfg.callbacks)
        assert "wandb" in train_cfg.loggers and "gradient_clipping" in train_cfg.algorithms
    json.dumps(train_cfg.model)  # plain data, loggable


def test_killed_run_resumes_to_the_same_weights(tmp_path, hsmm_path, hsmm_reference):
    """SIGKILL mid-training, rerun the same command: autoresume ends with the weights of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    vocab, medians = hsmm_reference
    # cells of 32 tokens: resuming does not depend on their length, and a batch costs a third of one at 128
    tokenize_hsmm(hsmm_path, vocab, medians, tmp_path / "cells", 32)

    def command(name):
        return [sys.executable, str(ROOT / "scripts/train.py"), PRETRAIN, f"variables.data={tmp_path / 'cells'}",
                f"variables.vocab={vocab}", "max_seq_len=32", f"variables.run_name={name}",
                f"save_folder={tmp_path / name}", "max_duration=40ba", "save_interval=4ba", "eval_interval=40ba",
                "eval_subset_num_batches=1", "global_train_batch_size=8", "device_train_microbatch_size=8",
                "save_num_checkpoints_to_keep=-1"]

    env = {**os.environ, "WANDB_MODE": "offline"}
    _, _, recipe, *overrides = command("whole")
    train_from_recipe(recipe, overrides)  # the uninterrupted run in this process, which imported Composer already
    process = subprocess.Popen(command("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "ep0-ba8-rank0.pt"  # 33 batches per epoch
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not (tmp_path / "killed" / "ep1-ba40-rank0.pt").exists()
    _, _, recipe, *overrides = command("killed")
    train_from_recipe(recipe, overrides)  # the same command again, here: it resumes from the killed run's checkpoint
    whole = torch.load(tmp_path / "whole" / "latest-rank0.pt", map_location="cpu", weights_only=False)
    again = torch.load(tmp_path / "killed" / "latest-rank0.pt", map_location="cpu", weights_only=False)
    assert os.readlink(tmp_path / "killed" / "latest-rank0.pt") == "ep1-ba40-rank0.pt"
    for name, value in whole["state"]["model"].items():
        assert torch.equal(value, again["state"]["model"][name]), name


def test_export_to_hugging_face_gives_identical_logits(tmp_path, stage1, hsmm_data):
    from transformers import LlamaForCausalLM

    trainer, checkpoint = stage1
    assert cli_main(["export-hf", "--checkpoint", str(checkpoint), "--vocab", hsmm_data["vocab"],
                     "--out", str(tmp_path / "hf"), "--time-unit", "hours"]) == 0
    exported = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    composer_model = trainer.state.model.eval()
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 14, 3, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    with torch.no_grad():
        expected = composer_model.model(**batch).logits
        logits = exported(**batch).logits
    assert torch.equal(logits, expected)
    metadata = json.loads((tmp_path / "hf" / "maxtoki.json").read_text())
    assert metadata["time_unit"] == "hours" and metadata["objective"] == "pretrain"
    assert metadata["special_tokens"]["<eoq>"] == len(json.loads((tmp_path / "hf" / "vocab.json").read_text())) - 1
    assert metadata["numeric_tokens"][str(metadata["special_tokens"]["<boq>"] - 1)] == 1499
    assert cli_main(["export-hf", "--checkpoint", str(tmp_path / "missing.pt"), "--vocab", hsmm_data["vocab"],
                     "--out", str(tmp_path / "x")]) == 2


def test_predict_time_matches_the_training_metric(tmp_path, hsmm_data, stage2):
    """Predictions of `maxtoki predict time` equal the model's read-out used in training and evaluation."""
    import pandas as pd

    from maxtoki.data.paragraphs.cell_store import CellStore
    from maxtoki.model.losses import numeric_readout

    _, checkpoint = stage2
    cli("data", "paragraphs", hsmm_data["cells"], "--out", tmp_path / "eval", "--eval", "--num-examples", 40,
        "--max-seq-len", 512, "--seed", 9)
    assert cli_main(["predict", "time", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "eval"),
                     "--out", str(tmp_path / "pred"), "--train-data", hsmm_data["paragraphs"],
                     "--calibration-data", str(tmp_path / "eval")]) == 0
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    examples = [e for e in CellStore(str(tmp_path / "eval")) if e["task"] == 1]
    assert len(table) == len(examples) > 5
    assert table["true_timelapse"].tolist() == [int(e["timelapse"]) for e in examples]
    from maxtoki.errors import MaxtokiError
    from maxtoki.inference import load_model

    with pytest.raises(MaxtokiError, match="a Composer checkpoint holds only its vocabulary's checksum; give the "):
        load_model(str(checkpoint))
    model, vocab = load_model(str(checkpoint), hsmm_data["vocab"])
    ids = torch.as_tensor(examples[0]["prompt_ids"].astype(np.int64))[None]
    with torch.no_grad():
        expected, _ = numeric_readout(model(input_ids=ids).logits[:, -1], torch.as_tensor(vocab.numeric_ids),
                                      torch.as_tensor(vocab.numeric_values[vocab.numeric_ids], dtype=torch.float32))
    assert table["predicted_timelapse"][0] == pytest.approx(float(expected[0]), abs=1e-3)
    # the interval: the central 80% of the distribution over time tokens, read off its cumulative sum
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1, vocab.numeric_ids].double()
    values = vocab.numeric_values[vocab.numeric_ids]
    order = np.argsort(values)
    cumulative = np.cumsum(torch.softmax(logits, dim=-1).numpy()[order])
    assert table["interval_low"][0] == values[order][np.argmax(cumulative >= 0.1)]
    assert table["interval_high"][0] == values[order][np.argmax(cumulative >= 0.9)]
    metrics = json.loads((tmp_path / "pred" / "metrics.json").read_text())
    true = table["true_timelapse"].to_numpy(dtype=float)
    inside = (true >= table["interval_low"]) & (true <= table["interval_high"])
    assert metrics["interval_nominal"] == 0.8 and metrics["interval_coverage"] == pytest.approx(inside.mean())
    # calibrated on these same prompts (a mechanical check): the share each prompt needed to hold its truth,
    # 1 - 2 min(P(T <= y), P(T >= y)); the share for new prompts is the ceil(0.8 (n + 1))-th smallest, and each
    # prompt's interval is redrawn at that of the prompts that share none of its cells (one culture: cells)
    with torch.no_grad():
        distributions = [torch.softmax(model(input_ids=torch.as_tensor(e["prompt_ids"].astype(np.int64))[None])
                                       .logits[0, -1, vocab.numeric_ids].double(), dim=-1).numpy()[order]
                         for e in examples]
    needed = []
    for probabilities, truth in zip(distributions, true):
        at = int(np.flatnonzero(values[order] == truth)[0])
        needed.append(1 - 2 * min(probabilities[:at + 1].sum(), probabilities[at:].sum()))
    def level(shares):
        return np.sort(shares)[int(np.ceil((len(shares) + 1) * 0.8)) - 1]

    needed = np.array(needed)
    assert metrics["calibrated"]["share"] == pytest.approx(level(needed), abs=1e-6)
    calibrated = metrics["calibrated"]
    assert calibrated["prompts"] == 0 and calibrated["also_from"] == "the scored prompts of other cells"
    apart = [not set(e["cell_indices"].tolist()) & set(examples[0]["cell_indices"].tolist()) for e in examples]
    assert 5 < sum(apart) < len(examples)
    first = np.cumsum(distributions[0])
    tail = (1 - level(needed[apart])) / 2
    assert table["calibrated_low"][0] == values[order][np.argmax(first >= tail - 1e-9)]
    assert table["calibrated_high"][0] == values[order][np.argmax(first >= 1 - tail + 1e-9)]
    assert set(metrics["model"]) == {"mae", "median_absolute_error", "rmse", "pearson_r"}
    spread = table["predicted_timelapse"].std(ddof=0)
    assert metrics["prediction_std"] == pytest.approx(spread)
    assert (metrics["warning"] is not None) == (spread < 0.1 * table["true_timelapse"].std(ddof=0))
    assert metrics["baselines_from"] == hsmm_data["paragraphs"]
    assert metrics["baseline_linear_fit"] == "fitted on the training paragraphs"
    assert table["linear_baseline_timelapse"].notna().all()
    assert (tmp_path / "pred" / "predicted_vs_true.png").stat().st_size > 10_000
    assert cli_main(["predict", "time", "--checkpoint", str(checkpoint), "--data", hsmm_data["paragraphs"],
                     "--out", str(tmp_path / "x")]) == 2  # training layout: no prompts apart


def test_a_model_predicting_a_constant_is_flagged():
    from maxtoki.inference.predict_time import collapse_warning

    true = np.array([-72.0, -48, -24, 24, 48, 72])
    warning = collapse_warning(np.full(6, 0.4) + 0.01 * np.arange(6), true)
    assert "predicts nearly the same time for every prompt (0.4 ± 0.02" in warning and "± 51.8" in warning
    assert collapse_warning(0.5 * true, true) is None


def test_damaged_checkpoints_are_refused_never_loaded(tmp_path, capsys, hsmm_data, stage1):
    import os
    import shutil

    _, checkpoint = stage1
    raw = Path(checkpoint).resolve().read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])  # an upload cut short
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF  # one byte changed inside the weights
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    for name in ("truncated.pt", "flipped.pt"):
        code = cli_main(["export-hf", "--checkpoint", str(tmp_path / name), "--vocab", hsmm_data["vocab"],
                         "--out", str(tmp_path / "hf")])
        err = capsys.readouterr().err
        assert code == 2 and "damaged" in err and "Traceback" not in err, err
    assert not (tmp_path / "hf").exists()
    recipe = [TEMPORAL, *stage2_args(hsmm_data, tmp_path / "flipped.pt"), f"save_folder={tmp_path / 'run'}"]
    assert train_main(recipe) == 2
    err = capsys.readouterr().err
    assert "load_path" in err and "damaged" in err
    # autoresume onto a damaged latest checkpoint: refused with what to do
    (tmp_path / "resume").mkdir()
    shutil.copy(tmp_path / "flipped.pt", tmp_path / "resume" / "ep0-ba8-rank0.pt")
    os.symlink("ep0-ba8-rank0.pt", tmp_path / "resume" / "latest-rank0.pt")
    assert train_main([PRETRAIN, f"variables.data={hsmm_data['cells']}", f"variables.vocab={hsmm_data['vocab']}",
                       "max_seq_len=128", f"save_folder={tmp_path / 'resume'}"]) == 2
    err = capsys.readouterr().err
    assert "damaged" in err and "Autoresume would load it: delete ep0-ba8-rank0.pt" in err


def test_unreachable_s3_fails_within_seconds(tmp_path, capsys, monkeypatch, hsmm_data):
    """Data, checkpoints or a checkpoint to read on an unreachable server: each command stops with one line
    naming the endpoint after the storage client's retries (3, each refused at once), before it writes anything."""
    from helpers.ports import connection_attempts, free_port

    port = free_port()  # nothing listens there
    unreachable = f"cannot reach the S3 server at http://127.0.0.1:{port}; check S3_ENDPOINT_URL"
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    attempts = connection_attempts(monkeypatch, port)

    def stopped(code: int, mentions: str) -> None:
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and mentions in err and unreachable in err, err
        assert len(attempts) == 4, attempts  # the first and 3 retries
        attempts.clear()

    stopped(train_main([PRETRAIN, "variables.data=s3://nowhere/cells", f"variables.vocab={hsmm_data['vocab']}",
                        f"save_folder={tmp_path / 'run'}"]), "s3://nowhere/cells")
    stopped(train_main([PRETRAIN, f"variables.data={hsmm_data['cells']}", f"variables.vocab={hsmm_data['vocab']}",
                        "save_folder=s3://nowhere/run"]), "s3://nowhere/run: ")  # local data, remote checkpoints
    stopped(cli_main(["predict", "time", "--checkpoint", "s3://nowhere/run/latest-rank0.pt", "--data",
                      "s3://nowhere/eval", "--out", str(tmp_path / "x")]), "s3://nowhere/")
    assert list(tmp_path.iterdir()) == []


def test_wandb_offline_run_directory_and_its_loss_curves(tmp_path, monkeypatch, hsmm_data):
    from maxtoki.run_curves import read_run

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    trainer = train_from_recipe(PRETRAIN, [f"variables.data={hsmm_data['cells']}",
                                           f"variables.vocab={hsmm_data['vocab']}", "max_seq_len=128",
                                           *common(tmp_path, "w", 4), "loggers={wandb: {project: maxtoki-test}, "
                                           "inmemory: {}}", "log_config=true"])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    rows, config = read_run(runs[0])
    assert config["model"]["name"] == "maxtoki_pretrain" and config["max_duration"] == "4ba"
    logged = {int(r["time/batch"]): r["loss/train/total"] for r in rows if "loss/train/total" in r}
    assert list(logged.values()) == pytest.approx(losses(trainer).tolist(), rel=1e-6) and len(logged) == 4
    assert cli_main(["plot-run", str(tmp_path / "wandb"), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    table = np.genfromtxt(tmp_path / "curves.csv", delimiter=",", names=True)
    assert np.allclose(table["losstraintotal"][:4], losses(trainer), rtol=1e-6)
    assert cli_main(["plot-run", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")]) == 2


def _rewrite_paragraphs(source, out, change):
    """A copy of paragraph shards with ``change`` applied to every sample (to make broken inputs)."""
    import shutil

    from streaming import MDSWriter

    from maxtoki.data.paragraphs.cell_store import CellStore

    shard = json.loads((Path(source) / "index.json").read_text())["shards"][0]
    columns = dict(zip(shard["column_names"], shard["column_encodings"]))
    with MDSWriter(out=str(out), columns=columns) as writer:
        for sample in CellStore(str(source)):
            writer.write(change(dict(sample)))
    shutil.copy(Path(source) / "manifest.json", Path(out) / "manifest.json")


def test_inference_refuses_bad_input_with_clear_messages(tmp_path, capsys, hsmm_data, hsmm_path, hsmm_reference,
                                                         stage2):
    _, checkpoint = stage2
    _, medians = hsmm_reference
    cli("data", "paragraphs", hsmm_data["cells"], "--out", tmp_path / "eval", "--eval", "--num-examples", 8,
        "--max-seq-len", 512, "--seed", 2)

    def refused(*argv):
        code = cli_main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        return err

    # data made with another vocabulary than the model's
    cli("data", "vocab", "--medians", medians, "--out", tmp_path / "other.json", "--max-time", 100)
    tokenize_hsmm(hsmm_path, tmp_path / "other.json", medians, tmp_path / "other-cells", 64)
    cli("data", "paragraphs", tmp_path / "other-cells", "--out", tmp_path / "other-eval", "--eval",
        "--num-examples", 4, "--max-seq-len", 256)
    for command in (["predict", "time"], ["generate"]):
        assert "another vocabulary than the data" in refused(*command, "--checkpoint", checkpoint, "--data",
                                                             tmp_path / "other-eval", "--out", tmp_path / "x")
    assert "another vocabulary" in refused("embed", "--checkpoint", checkpoint, "--data", tmp_path / "other-cells",
                                           "--out", tmp_path / "x.h5ad")
    # prompts that do not end with <eoq>
    _rewrite_paragraphs(tmp_path / "eval", tmp_path / "no-eoq", lambda s: {**s, "prompt_ids": s["prompt_ids"][:-1]})
    assert "does not end with <eoq>" in refused("predict", "time", "--checkpoint", checkpoint, "--data",
                                                tmp_path / "no-eoq", "--out", tmp_path / "x")
    # prompts longer than the model's context
    cli("export-hf", "--checkpoint", checkpoint, "--vocab", hsmm_data["vocab"], "--out", tmp_path / "short")
    config = json.loads((tmp_path / "short" / "config.json").read_text())
    (tmp_path / "short" / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    for command in (["predict", "time"], ["generate"]):
        assert "longer" in refused(*command, "--checkpoint", tmp_path / "short", "--data", tmp_path / "eval",
                                   "--out", tmp_path / "x")
    # nothing to ask: no examples of the task, an empty or missing data set
    cli("data", "paragraphs", hsmm_data["cells"], "--out", tmp_path / "next-only", "--eval", "--num-examples", 4,
        "--max-seq-len", 512, "--task-ratio", 0)
    assert "holds no TimeBetweenCells examples" in refused("predict", "time", "--checkpoint", checkpoint, "--data",
                                                           tmp_path / "next-only", "--out", tmp_path / "x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "index.json").write_text(json.dumps({"version": 2, "shards": []}))
    for command in (["predict", "time"], ["generate"]):
        assert "the data set is empty" in refused(*command, "--checkpoint", checkpoint, "--data", tmp_path / "empty",
                                                  "--out", tmp_path / "x")
    assert "not a directory of MDS shards" in refused("predict", "time", "--checkpoint", checkpoint, "--data",
                                                      tmp_path / "nowhere", "--out", tmp_path / "x")
    assert "no such" in refused("embed", "--checkpoint", tmp_path / "missing.pt", "--data", hsmm_data["cells"],
                                "--out", tmp_path / "x.h5ad")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.h5ad").exists()


def test_embeddings_from_shards_and_from_h5ad_agree(tmp_path, hsmm_data, hsmm_path, hsmm_reference, stage1):
    import anndata as ad

    from maxtoki.data.paragraphs.cell_store import CellStore
    from maxtoki.inference import embed_tokens, load_model

    _, checkpoint = stage1
    _, medians = hsmm_reference
    cli("export-hf", "--checkpoint", checkpoint, "--vocab", hsmm_data["vocab"], "--out", tmp_path / "hf")
    cli("embed", "--checkpoint", checkpoint, "--data", hsmm_data["cells"], "--out", tmp_path / "shards.h5ad")
    cli("embed", "--checkpoint", tmp_path / "hf", "--data", hsmm_path, "--out", tmp_path / "direct.h5ad",
        "--medians", medians, "--allow-non-integer", "--min-expression", 0.1)
    from_shards, direct = ad.read_h5ad(tmp_path / "shards.h5ad"), ad.read_h5ad(tmp_path / "direct.h5ad")
    assert from_shards.obsm["X_maxtoki"].shape == (271, 64) and direct.n_vars == 47192
    assert list(from_shards.obs_names) == list(direct.obs_names)
    assert np.allclose(from_shards.obsm["X_maxtoki"], direct.obsm["X_maxtoki"], atol=1e-5)
    # a Composer checkpoint tokenizes an .h5ad with the vocabulary given by --vocab
    cli("embed", "--checkpoint", checkpoint, "--vocab", hsmm_data["vocab"], "--data", hsmm_path, "--out",
        tmp_path / "with_vocab.h5ad", "--medians", medians, "--allow-non-integer", "--min-expression", 0.1)
    assert np.allclose(ad.read_h5ad(tmp_path / "with_vocab.h5ad").obsm["X_maxtoki"], direct.obsm["X_maxtoki"],
                       atol=1e-6)
    # the pooling: mean over gene tokens of the final hidden states
    model, vocab = load_model(str(checkpoint), hsmm_data["vocab"])
    ids = torch.as_tensor(CellStore(hsmm_data["cells"])[0]["input_ids"].astype(np.int64))[None]
    with torch.no_grad():
        states = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
    assert np.allclose(states[1:-1].mean(dim=0).numpy(), from_shards.obsm["X_maxtoki"][0], atol=1e-5)
    assert np.allclose(embed_tokens(model, [ids[0].numpy()], vocab)[0], from_shards.obsm["X_maxtoki"][0], atol=1e-6)


def test_generation_is_exact_with_the_kv_cache_and_respects_the_bans(tmp_path, hsmm_data, stage2):
    from maxtoki.data.paragraphs.cell_store import CellStore
    from maxtoki.inference import Sampling, cells_to_anndata, generate_cells, load_model

    _, checkpoint = stage2
    cli("data", "paragraphs", hsmm_data["cells"], "--out", tmp_path / "eval", "--eval", "--num-examples", 12,
        "--max-seq-len", 512, "--seed", 3, "--task-ratio", 0)
    prompts = [e["prompt_ids"] for e in CellStore(str(tmp_path / "eval"))][:4]
    model, vocab = load_model(str(checkpoint), hsmm_data["vocab"])
    greedy = Sampling(max_new_tokens=40)
    cached = generate_cells(model, prompts, vocab, greedy, batch_size=4)
    naive = [generate_cells(model, [p], vocab, greedy, use_cache=False)[0] for p in prompts]
    assert all(np.array_equal(a, b) for a, b in zip(cached, naive))
    sampled = Sampling(greedy=False, temperature=1.5, top_k=50, top_p=0.9, max_new_tokens=40, seed=5)
    first, again = (generate_cells(model, prompts, vocab, sampled, batch_size=2) for _ in range(2))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    for cell in cached + first:
        assert cell[0] == vocab.bos_id and len(cell) <= 40
        body = cell[1:-1] if cell[-1] == vocab.eos_id else cell[1:]
        assert vocab.is_gene[body].all() and len(set(body.tolist())) == len(body)
    adata = cells_to_anndata(first, vocab)
    assert adata.shape == (4, len(vocab.genes)) and adata.X.max() == pytest.approx(1.0)


def test_generate_command_writes_tokens_and_anndata(tmp_path, hsmm_data, stage2):
    import anndata as ad

    _, checkpoint = stage2
    cli("data", "paragraphs", hsmm_data["cells"], "--out", tmp_path / "eval", "--eval", "--num-examples", 6,
        "--max-seq-len", 480, "--seed", 4, "--task-ratio", 0)
    cli("generate", "--checkpoint", checkpoint, "--data", tmp_path / "eval", "--out", tmp_path / "gen",
        "--sample", "--top-k", 20, "--seed", 1, "--max-new-tokens", 30)
    tokens = [json.loads(line) for line in (tmp_path / "gen" / "tokens.jsonl").read_text().splitlines()]
    generated = ad.read_h5ad(tmp_path / "gen" / "generated_cells.h5ad")
    assert len(tokens) == generated.n_obs == 6 and all(t[0] == 2 for t in tokens)
    assert generated.obs["generated_genes"].tolist() == [int((generated.X[i] > 0).sum()) for i in range(6)]
    assert set(generated.obs.columns) >= {"group", "timelapse", "times", "source_cells"}


def test_generate_judges_its_cells_against_the_real_cells(tmp_path, capsys, hsmm_data, stage2):
    import shutil

    import anndata as ad

    _, checkpoint = stage2
    cli("data", "paragraphs", hsmm_data["cells"], "--out", tmp_path / "eval", "--eval", "--num-examples", 40,
        "--max-seq-len", 300, "--seed", 5, "--task-ratio", 0, "--min-timepoints", 2, "--max-timepoints", 2)
    capsys.readouterr()
    cli("generate", "--checkpoint", checkpoint, "--data", tmp_path / "eval", "--out", tmp_path / "gen",
        "--max-new-tokens", 30)
    printed = capsys.readouterr().out
    assert "baseline: copy last context cell" in printed and "of real held-out cells" in printed
    summary = json.loads((tmp_path / "gen" / "evaluation.json").read_text())
    assert summary["examples"] == 40 and 40 < summary["reference_cells"] <= 80
    assert set(summary["reference_times"]) == {"0", "24", "48", "72"}
    for scores in summary["time"].values():
        assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["mae"] <= 72
    # on real cells the read-out works: a real response cell reads as its own time more often than chance
    assert summary["time"]["real_response_cell"]["accuracy"] > summary["chance_accuracy"] + 0.1
    singlets = summary["singlets"]
    assert 0 <= singlets["generated"] <= 1 and singlets["real_held_out_cells"] > singlets["simulated_doublets"]
    assert (tmp_path / "gen" / "evaluation.png").stat().st_size > 10_000
    obs = ad.read_h5ad(tmp_path / "gen" / "generated_cells.h5ad").obs
    times = [list(map(int, t.split())) for t in obs["times"]]
    assert obs["target_time"].tolist() == [t[0] + int(d) for t, d in zip(times, obs["timelapse"])]
    assert set(obs["implied_time"]) <= {0, 24, 48, 72} and obs["singlet_probability"].between(0, 1).all()
    # skipped on request (an earlier evaluation in the same directory goes); skipped with a note when the cells
    # the paragraphs name are gone; an error when the cells given are not there
    cli("generate", "--checkpoint", checkpoint, "--data", tmp_path / "eval", "--out", tmp_path / "gen",
        "--max-new-tokens", 5, "--no-evaluate")
    assert not (tmp_path / "gen" / "evaluation.json").exists() and "not judged" not in capsys.readouterr().err
    shutil.copytree(tmp_path / "eval", tmp_path / "moved")
    manifest = json.loads((tmp_path / "moved" / "manifest.json").read_text())
    manifest["cells"]["location"] = str(tmp_path / "gone")
    (tmp_path / "moved" / "manifest.json").write_text(json.dumps(manifest))
    cli("generate", "--checkpoint", checkpoint, "--data", tmp_path / "moved", "--out", tmp_path / "moved-gen",
        "--max-new-tokens", 5)
    assert "not judged" in capsys.readouterr().err and not (tmp_path / "moved-gen" / "evaluation.json").exists()
    assert cli_main([str(a) for a in ("generate", "--checkpoint", checkpoint, "--data", tmp_path / "moved", "--out",
                                      tmp_path / "x", "--cells", tmp_path / "gone")]) == 2
    assert f"{tmp_path / 'gone'}: not a directory of MDS shards" in capsys.readouterr().err
