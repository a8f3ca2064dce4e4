"""The GPU benchmark (benchmarks/gpu/run.py) in its CPU form, end to end: it runs in the default test
run so that it keeps working between the occasions a GPU is at hand."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def script(name: str):
    """A module of benchmarks/gpu/ (not a package), loaded under a name of its own."""
    spec = importlib.util.spec_from_file_location(f"gpu_benchmark_{name}", ROOT / "benchmarks/gpu" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_the_gpu_benchmark_runs_every_measurement_in_its_cpu_form(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu/run.py"), "--cpu", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())

    training = {(m["size"], m["stage"], m["packing"]): m for m in results["training"]}
    assert set(training) == {("tiny", 1, None), ("tiny", 1, "auto"), ("tiny", 2, None), ("tiny released", 2, None)}
    for key, measurement in training.items():
        if key[2] == "auto" and "skipped" in measurement:  # the loaders may not take the packing key yet
            assert "packing_ratio" in measurement["skipped"]
            continue
        assert positive(measurement["tokens_per_sec"]), measurement
        assert isinstance(measurement["microbatch_size"], int) and measurement["microbatch_size"] >= 1, measurement
        assert measurement["measured_steps"] >= 1 and measurement["precision"] == "fp32"

    generation = results["generation"]
    assert generation["identical"], generation
    for mode in ("kv_cache", "naive"):
        assert positive(generation[mode]["tokens_per_sec"])
        assert generation[mode]["generated"] == generation["tokens"]
    batched, screen = generation["batched"], generation["screen"]
    assert batched["prompts"] == 16 and batched["identical_first_4"], batched  # fp32: the same tokens
    assert positive(batched["batch_tokens_per_sec"]) and positive(batched["one_at_a_time_tokens_per_sec"])
    assert screen["variants"] == 62 and screen["max_difference"] < 1e-4, screen  # batched = alone
    assert positive(screen["batch_variants_per_sec"]) and positive(screen["one_at_a_time_variants_per_sec"])
    assert results["environment"]["torch"] and "tokens/s" in run.stdout


def test_the_gpu_runs_give_the_training_entry_point_valid_recipes(tmp_path):
    """What only a GPU runs, checked here: every GPU run's recipe and overrides pass the recipe-key check,
    and say what the benchmark means (no eval, no checkpoints, packing off or auto, random weights)."""
    from maxtoki.training import check_recipe_keys, load_recipe

    measure, benchmark = script("measure"), script("run")

    data = {"cells": tmp_path / "cells", "cells_vocab": tmp_path / "v.json", "paragraphs": tmp_path / "paragraphs",
            "paragraphs_vocab": tmp_path / "pv.json", "released_model": tmp_path / "model",
            "released_paragraphs": tmp_path / "rp"}
    runs = benchmark.training_runs(benchmark.GPU, data, gpus=2, peak_flops=None)
    assert [(r["size"], r["stage"], r["packing"]) for r in runs] == [
        (size, stage, packing) for size in ("217m", "1b") for stage, packing in ((1, None), (1, "auto"), (2, None))
    ] + [("217m released", 2, None)]
    for run in runs:
        cfg = load_recipe(measure.benchmark_recipe(str(ROOT / run["recipe"]), tmp_path),
                          [*run["overrides"], "callbacks.peak_memory={warmup: 5}"])
        check_recipe_keys(cfg)
        assert list(cfg.loggers) == ["inmemory"] and cfg.eval_loader is None and cfg.save_folder is None
        assert cfg.max_duration == "20ba" and cfg.global_train_batch_size == 2 * run["rows_per_gpu"]
        assert cfg.precision == "amp_bf16" and cfg.device_train_microbatch_size == "auto"
        assert cfg.fsdp_config.sharding_strategy == "FULL_SHARD" and cfg.callbacks.speed_monitor.window_size == 1
        if run["stage"] == 1:
            assert cfg.train_loader.dataset.get("packing_ratio") == run["packing"]
            assert cfg.model.name == "maxtoki_pretrain" and cfg.max_seq_len == benchmark.GPU.cell_tokens
        elif run["size"] == "217m released":  # the weights come from model.pretrained (load_path is then not read)
            assert cfg.model.pretrained == str(tmp_path / "model") and cfg.model.size == "217m"
            assert cfg.model.pad_heads == "auto" and cfg.max_seq_len == benchmark.GPU.paragraph_tokens
            assert cfg.train_loader.dataset.remote == str(tmp_path / "rp")
        else:
            assert cfg.load_path is None and cfg.max_seq_len == benchmark.GPU.paragraph_tokens
