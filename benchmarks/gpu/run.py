"""GPU throughput of MaxToki training and generation, from a clean checkout, in at most 8 minutes.

    .venv/bin/python benchmarks/gpu/run.py --out results.json         # GPUs: every visible one
    .venv/bin/python benchmarks/gpu/run.py --cpu --out results.json   # the tiny form on CPU (tests)

Needs only `bash scripts/setup.sh`: no network, no data besides the bundled maxtoki/datasets/. It
tokenizes PBMC 3k (2,700 cells, 4,096-token cells) for stage 1 and builds HSMM time-course paragraphs
(16,384 tokens) for stage 2, and imports a random model laid out as MaxToki-217M is released
(`maxtoki import-hf`) for a stage-2 run from released weights (heads of 154 padded to 160, so fused
attention runs them), on paragraphs encoded with the released vocabulary and medians. A randomly
initialised `217m` in bf16 generates a 1,000-token cell with and without the KV cache, then 64 prompts in one
batch against one at a time, and reads the embedding screen's variants (256 genes spread over a 2,046-gene
cell deleted) as a screen does (shared prefixes, packed) against one whole variant at a time. Then `217m`
and `1b` train from configs/pretrain and configs/temporal (FSDP,
amp_bf16, device_train_microbatch_size auto, random weights) for 20 steps each: stage 1 with
`train_loader.dataset.packing_ratio` null (padded batches) and auto (packed rows), and stage 2. Each
training run is its own `composer -n GPUS` launch, so that it starts fresh and frees its GPU memory.

Reported per run (results.json, written after every run, and a table): tokens/s (real tokens, median
of the steps after the first 5, from Composer's SpeedMonitor), MFU, peak memory over those steps, the
micro-batch size Composer settled on, whether FSDP was on, and wall seconds. A run that the training
entry point refuses for the packing key is recorded as skipped, with the reason; a failed run is
recorded with the end of its output, and the others still run. Planned for 8 minutes on one H100 or
H200, data preparation included; each run is stopped after 4.

On one GPU llm-foundry turns FSDP off (and with it the recipes' activation checkpointing) and builds
the model on the host: the runs then measure single-device training, and say so (`"fsdp": false`).

The CPU form runs the same steps with the tiny recipes in fp32 (64-token cells, 5 steps, 64 generated
tokens), each measurement in this process rather than a launch of its own, in about a minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEASURE = Path(__file__).resolve().parent / "measure.py"
PBMC = ROOT / "maxtoki/datasets/pbmc3k_raw.h5ad"
HSMM = ROOT / "maxtoki/datasets/hsmm_myoblast_timecourse.h5ad"


@dataclass(frozen=True)
class Plan:
    """What one form of the benchmark runs; recipe paths are under configs/, with {size} filled in."""

    sizes: tuple[str, ...]
    stage1_recipe: str
    stage2_recipe: str
    cell_tokens: int  # --model-input-size of the stage-1 cells: at most the stage-1 recipe's max_seq_len
    paragraph_tokens: int  # --max-seq-len of the stage-2 paragraphs: the stage-2 recipe's max_seq_len
    cells_per_gpu: int  # rows per GPU and step: enough for the micro-batch search, few enough for the budget
    paragraphs_per_gpu: int
    steps: int
    warmup: int  # steps left out of the medians: the first holds the micro-batch search
    generation_size: str
    generation_tokens: int
    generation_batch: int  # prompts generated in one batch, against one at a time
    screen_genes: int  # genes of the cell whose deletions the embedding screen reads
    device: str
    dtype: str
    timeout_s: int  # per measurement
    released_shape: dict  # the release (20,275 rows) imported for the stage-2 run from released weights
    released_overrides: tuple[str, ...] = ()  # what that run adds to the stage-2 recipe


GPU = Plan(sizes=("217m", "1b"), stage1_recipe="pretrain/{size}.yaml", stage2_recipe="temporal/{size}.yaml",
           cell_tokens=4096, paragraph_tokens=16384, cells_per_gpu=32, paragraphs_per_gpu=4, steps=20, warmup=5,
           generation_size="217m", generation_tokens=1000, generation_batch=64, screen_genes=2046, device="cuda",
           dtype="bfloat16", timeout_s=240,
           released_shape=dict(hidden=1232, layers=11, heads=8, intermediate=2464))
CPU = Plan(sizes=("tiny",), stage1_recipe="pretrain/tiny-cpu.yaml", stage2_recipe="temporal/tiny-cpu.yaml",
           cell_tokens=64, paragraph_tokens=1024, cells_per_gpu=16, paragraphs_per_gpu=4, steps=5, warmup=2,
           generation_size="tiny", generation_tokens=64, generation_batch=16, screen_genes=62, device="cpu",
           dtype="float32", timeout_s=300,
           # heads of 154 as the released 217M's, padded on CPU too
           released_shape=dict(hidden=308, layers=2, heads=2, intermediate=128),
           released_overrides=("model.size=null", "model.pad_heads=true",
                               "model.rope_scaling.original_max_position_embeddings=4096"))
# PBMC cells average 849 of 4,096 tokens, so a packed row holds about 4.7 of them: a quarter of the rows
# reads about as many cells per step as the padded batch, and fills about as many positions
PACKED_ROW_DIVISOR = 4


def maxtoki(*args) -> None:
    """A maxtoki command in this process (data preparation touches no GPU)."""
    from maxtoki.cli import main as cli_main

    if cli_main(["--quiet", *map(str, args)]) != 0:
        raise SystemExit(f"maxtoki {' '.join(map(str, args))} failed")


def maxtoki_data(*args) -> None:
    maxtoki("data", *args)


def prepare_data(work: Path, plan: Plan, gpus: int) -> dict[str, Path]:
    """Stage-1 cells (PBMC 3k) and stage-2 paragraphs (the HSMM time course), each with its vocabulary."""
    cells, hsmm = work / "pbmc", work / "hsmm"
    maxtoki_data("medians", PBMC, "--out", cells / "medians.json")
    maxtoki_data("vocab", "--medians", cells / "medians.json", "--out", cells / "vocab.json")
    maxtoki_data("tokenize", PBMC, "--vocab", cells / "vocab.json", "--medians", cells / "medians.json",
                 "--out", cells / "cells", "--model-input-size", plan.cell_tokens)
    # as configs/data/hsmm_myoblast.yaml: FPKM values, below 0.1 noise; times 0-72 h, so time tokens +-100
    maxtoki_data("medians", HSMM, "--allow-non-integer", "--min-expression", 0.1, "--out", hsmm / "medians.json")
    maxtoki_data("vocab", "--medians", hsmm / "medians.json", "--max-time", 100, "--out", hsmm / "vocab.json")
    maxtoki_data("tokenize", "--config", ROOT / "configs/data/hsmm_myoblast.yaml", "--vocab", hsmm / "vocab.json",
                 "--medians", hsmm / "medians.json", "--out", hsmm / "cells", "--model-input-size", plan.cell_tokens)
    maxtoki_data("paragraphs", hsmm / "cells", "--out", hsmm / "paragraphs", "--max-seq-len", plan.paragraph_tokens,
                 "--num-examples", plan.steps * plan.paragraphs_per_gpu * gpus)
    released = prepare_released(work, plan, gpus)
    return {"cells": cells / "cells", "cells_vocab": cells / "vocab.json", "paragraphs": hsmm / "paragraphs",
            "paragraphs_vocab": hsmm / "vocab.json", **released}


def prepare_released(work: Path, plan: Plan, gpus: int) -> dict[str, Path]:
    """A random model laid out as MaxToki-217M is released, imported (maxtoki import-hf), and HSMM paragraphs
    encoded with the released vocabulary and medians: stage 2 from released weights."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.released import released_config, write_release

    released = work / "released"
    write_release(released / "MaxToki-217M", released_config(**plan.released_shape))
    maxtoki("import-hf", released / "MaxToki-217M", "--out", released / "model")
    maxtoki_data("released", "--out", released / "resources")
    maxtoki_data("tokenize", "--config", ROOT / "configs/data/hsmm_myoblast.yaml", "--vocab",
                 released / "model" / "vocab.json", "--medians", released / "resources" / "medians.json",
                 "--out", released / "cells", "--model-input-size", plan.cell_tokens)
    maxtoki_data("paragraphs", released / "cells", "--out", released / "paragraphs", "--max-seq-len",
                 plan.paragraph_tokens, "--num-examples", plan.steps * plan.paragraphs_per_gpu * gpus)
    return {"released_model": released / "model", "released_paragraphs": released / "paragraphs"}


def launch(command: list[str], log: Path, timeout_s: int) -> tuple[int, float]:
    """Exit status and wall seconds of ``command``, its output in ``log``; the whole process group is
    stopped at the timeout (status None)."""
    start = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            status = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            status = None
    return status, time.perf_counter() - start


def measure_in_process(argv: list[str], log: Path) -> tuple[int, float]:
    """The CPU form: measure.py's main in this process (nothing to free between measurements, and each
    launch would cost its imports again); exit status 1 with the traceback in ``log`` on failure."""
    import contextlib
    import importlib.util
    import traceback

    spec = importlib.util.spec_from_file_location("gpu_benchmark_measure", MEASURE)
    measure = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)
    start = time.perf_counter()
    with open(log, "w") as output, contextlib.redirect_stdout(output), contextlib.redirect_stderr(output), \
            contextlib.chdir(ROOT):  # recipes are named from the checkout's root, as a launch's cwd
        try:
            status = measure.main(argv)
        except Exception:  # recorded as this measurement's failure; the others still run
            traceback.print_exc()
            status = 1
    return status, time.perf_counter() - start


def failure(status: int | None, log: Path, timeout_s: int) -> str:
    tail = log.read_text(errors="replace").splitlines()[-25:]
    what = f"stopped after {timeout_s} s" if status is None else f"exit status {status}"
    return f"{what}; last lines of its output:\n" + "\n".join(tail)


def recipe_packs(recipe: str) -> bool:
    """Whether the recipe's training cells are packed (the GPU stage-1 recipes pack by default)."""
    from omegaconf import OmegaConf

    dataset = OmegaConf.load(ROOT / recipe).get("train_loader", {}).get("dataset", {})
    return dataset.get("packing_ratio") is not None


def training_runs(plan: Plan, data: dict[str, Path], gpus: int, peak_flops: float | None) -> list[dict]:
    """The training measurements in the order they run: a size's three before the next size's."""
    runs = []
    for size in plan.sizes:
        for stage, packing in ((1, None), (1, "auto"), (2, None)):
            kind = "cells" if stage == 1 else "paragraphs"
            if stage == 2:
                rows = plan.paragraphs_per_gpu
            else:
                rows = plan.cells_per_gpu // PACKED_ROW_DIVISOR if packing else plan.cells_per_gpu
            recipe = f"configs/{(plan.stage1_recipe if stage == 1 else plan.stage2_recipe).format(size=size)}"
            overrides = [f"variables.data={data[kind]}", f"variables.vocab={data[kind + '_vocab']}",
                         f"max_duration={plan.steps}ba", f"global_train_batch_size={rows * gpus}",
                         "eval_loader=null", "save_folder=null", "autoresume=false",
                         "callbacks.speed_monitor.window_size=1", f"console_log_interval={plan.steps}ba"]
            if stage == 2:
                overrides.append("load_path=null")  # random weights: speed does not depend on them
            if packing:
                overrides.append(f"train_loader.dataset.packing_ratio={packing}")
            elif stage == 1 and recipe_packs(recipe):
                overrides.append("train_loader.dataset.packing_ratio=null")
            if peak_flops:
                overrides.append(f"callbacks.speed_monitor.gpu_flops_available={peak_flops}")
            name = f"{size} stage {stage}" + (f", packing {packing}" if packing else "")
            runs.append({"name": name, "recipe": recipe, "size": size, "stage": stage, "packing": packing,
                         "rows_per_gpu": rows, "overrides": overrides})
    runs.append(released_run(plan, data, gpus, peak_flops))
    return runs


def released_run(plan: Plan, data: dict[str, Path], gpus: int, peak_flops: float | None) -> dict:
    """Stage 2 of the imported release by the first size's recipe, as docs/released-weights.md runs it: the
    weights from model.pretrained, the heads of 154 zero-padded to 160 so fused attention runs them."""
    size, rows = plan.sizes[0], plan.paragraphs_per_gpu
    overrides = [f"model.pretrained={data['released_model']}", f"variables.vocab={data['released_model']}/vocab.json",
                 f"variables.data={data['released_paragraphs']}", f"max_duration={plan.steps}ba",
                 f"global_train_batch_size={rows * gpus}", "eval_loader=null", "save_folder=null", "autoresume=false",
                 "callbacks.speed_monitor.window_size=1", f"console_log_interval={plan.steps}ba",
                 *plan.released_overrides]
    if peak_flops:
        overrides.append(f"callbacks.speed_monitor.gpu_flops_available={peak_flops}")
    return {"name": f"{size} released, stage 2", "recipe": f"configs/{plan.stage2_recipe.format(size=size)}",
            "size": f"{size} released", "stage": 2, "packing": None, "rows_per_gpu": rows, "overrides": overrides}


def measure_training(run: dict, plan: Plan, gpus: int, work: Path) -> dict:
    out, log = work / f"{run['name']}.json", work / f"{run['name']}.log"
    argv = ["train", "--out", str(out), "--warmup", str(plan.warmup), run["recipe"], *run["overrides"]]
    if plan.device == "cuda":
        launcher = [sys.executable, "-m", "composer.cli.launcher", "-n", str(gpus)]
        status, seconds = launch([*launcher, str(MEASURE), *argv], log, plan.timeout_s)
    else:
        status, seconds = measure_in_process(argv, log)
    result = {key: value for key, value in run.items() if key != "overrides"}
    if status == 0 and out.exists():
        return {**result, **json.loads(out.read_text()), "wall_seconds": seconds}
    return {**result, "error": failure(status, log, plan.timeout_s), "wall_seconds": seconds}


def measure_generation(plan: Plan, data: dict[str, Path], work: Path) -> dict:
    out, log = work / "generation.json", work / "generation.log"
    argv = ["generate", "--out", str(out), "--vocab", str(data["paragraphs_vocab"]), "--size", plan.generation_size,
            "--tokens", str(plan.generation_tokens), "--device", plan.device, "--dtype", plan.dtype,
            "--batch", str(plan.generation_batch), "--screen-length", str(plan.screen_genes)]
    if plan.device == "cuda":
        status, seconds = launch([sys.executable, str(MEASURE), *argv], log, plan.timeout_s)
    else:
        status, seconds = measure_in_process(argv, log)
    if status == 0 and out.exists():
        return {**json.loads(out.read_text()), "wall_seconds": seconds}
    return {"size": plan.generation_size, "error": failure(status, log, plan.timeout_s), "wall_seconds": seconds}


def environment(plan: Plan, gpus: int) -> dict:
    """Read after the measurements: CUDA initialised here would hold memory on the first GPU."""
    import platform

    import torch

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {"device": torch.cuda.get_device_name(0) if plan.device == "cuda" else platform.processor() or "cpu",
            "gpus": gpus, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "composer": version("mosaicml"), "llm-foundry": version("llm-foundry"),
            "flash-attn": version("flash-attn")}


def number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADER = (f"{'measurement':<26} {'tokens/s':>10} {'per GPU':>10} {'MFU':>6} {'peak GiB':>8} {'micro-batch':>11} "
          f"{'FSDP':>4} {'wall s':>6}")


def training_row(run: dict) -> str:
    if "skipped" in run or "error" in run:
        note = f"skipped: {run['skipped']}" if "skipped" in run else "failed: " + run["error"].splitlines()[0]
        return f"{run['name']:<26} {note[:100]}"
    return (f"{run['name']:<26} {number(run['tokens_per_sec'], ',.0f'):>10} "
            f"{number(run['tokens_per_sec_per_gpu'], ',.0f'):>10} {number(run['mfu'], '.1%'):>6} "
            f"{number(run['peak_memory_gib'], '.1f'):>8} {run['microbatch_size']:>11} "
            f"{'yes' if run['fsdp'] else 'no':>4} {run['wall_seconds']:>6.0f}")


def generation_rows(generation: dict) -> list[str]:
    if "error" in generation:
        return ["generation failed: " + generation["error"].splitlines()[0]]
    rows = [f"{'generation ' + generation['size'] + ' ' + mode.replace('_', ' '):<26} "
            f"{generation[mode]['tokens_per_sec']:>10,.0f}  ({generation[mode]['generated']} tokens in "
            f"{generation[mode]['seconds']:.2f} s)" for mode in ("kv_cache", "naive")]
    batched, screen = generation["batched"], generation["screen"]
    return rows + [
        f"KV-cache speed-up {generation['speedup']:.1f}x; outputs identical: {generation['identical']}",
        f"{'generation batch ' + str(batched['prompts']):<26} {batched['batch_tokens_per_sec']:>10,.0f}  (one at a "
        f"time {batched['one_at_a_time_tokens_per_sec']:,.0f} tokens/s: {batched['speedup']:.1f}x; first 4 "
        f"identical: {batched['identical_first_4']})",
        f"{'embedding screen':<26} {screen['batch_variants_per_sec']:>10,.0f}  variants/s of a {screen['cell_genes']}"
        f"-gene cell (one at a time {screen['one_at_a_time_variants_per_sec']:,.0f}: {screen['speedup']:.1f}x)"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results.json", help="results JSON (written after every measurement)")
    parser.add_argument("--cpu", action="store_true", help="the tiny form on CPU, fp32")
    parser.add_argument("--gpus", type=int, help="GPUs to train on (default: all visible)")
    parser.add_argument("--peak-flops", type=float,
                        help="bf16 dense peak FLOP/s of one GPU, for MFU where Composer does not know the device "
                             "(its table has H100 SXM and PCIe, H200, A100)")
    args = parser.parse_args(argv)
    plan = CPU if args.cpu else GPU
    if plan.device == "cuda":
        import torch

        gpus = args.gpus or torch.cuda.device_count()
        if gpus < 1:
            parser.error("no GPU visible; run with --cpu for the CPU form")
    else:
        gpus = 1
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {"plan": {**asdict(plan), "packed_row_divisor": PACKED_ROW_DIVISOR}}
    with tempfile.TemporaryDirectory(prefix="maxtoki-gpu-benchmark-") as tmp:
        work = Path(tmp)
        data = prepare_data(work, plan, gpus)
        results["data_seconds"] = time.perf_counter() - start
        print(f"data ready in {results['data_seconds']:.0f} s", flush=True)
        # generation first: it is short, and a run cut short by a time limit keeps it
        results["generation"] = measure_generation(plan, data, work)
        print("\n".join(generation_rows(results["generation"])) + "\n" + HEADER, flush=True)
        results["training"] = []
        for run in training_runs(plan, data, gpus, args.peak_flops):
            results["training"].append(measure_training(run, plan, gpus, work))
            out.write_text(json.dumps(results, indent=2) + "\n")
            print(training_row(results["training"][-1]), flush=True)
    results["environment"] = environment(plan, gpus)
    results["total_seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['environment']['device']} x {gpus}, torch {results['environment']['torch']}, "
          f"CUDA {results['environment']['cuda']}; {results['total_seconds']:.0f} s in all -> {out}")
    failed = [run["name"] for run in results["training"] if "error" in run] + \
        (["generation"] if "error" in results["generation"] else [])
    if failed:
        print(f"failed: {', '.join(failed)} (see {out})", file=sys.stderr)
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
