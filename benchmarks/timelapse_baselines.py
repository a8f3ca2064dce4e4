"""TimeBetweenCells: the model next to its baselines (training-mean Δ, the paper's naive baseline: the most
common time of the query cell's kind, linear regressor), on held-out cells of the bundled HSMM time course (the
demo's model) and on held-out simulated donors, there also per donor.

    ../.venv/bin/python timelapse_baselines.py [DEMO_OUTPUT]   # after `bash scripts/demo.sh` (default ../demo-output)

The simulated case trains the widened tiny model of tests/test_learning.py (about 2 minutes on 2 cores).
"""

import json
import sys
import tempfile
from pathlib import Path

from maxtoki.cli import main as cli
from maxtoki.pipeline import scores_table
from maxtoki.training import train_from_recipe

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo-output"


def run(*argv) -> None:
    if cli([str(a) for a in argv]) != 0:
        sys.exit(f"failed: maxtoki {' '.join(map(str, argv))}")


def simulated(work: Path) -> Path:
    """Control donors only; 15% of them held out; pairs of cells with times in years."""
    years = ["--time-scale", 1 / 12, "--min-timepoints", 2, "--max-timepoints", 3, "--max-seq-len", 256, "--seed", 1,
             "--split", "train=0.85,val=0.15", "--holdout-values", "condition=disease"]
    run("data", "simulate", "--out", work / "sim.h5ad", "--donors", 36, "--disease-donors", 8, "--age-acceleration",
        120, "--ages-per-donor", 6, "--cells-per-sample", 20, "--genes", 400, "--seed", 3)
    run("data", "medians", work / "sim.h5ad", "--out", work / "m.json")
    run("data", "vocab", "--medians", work / "m.json", "--out", work / "v.json", "--max-time", 100)
    run("data", "tokenize", work / "sim.h5ad", "--vocab", work / "v.json", "--medians", work / "m.json", "--out",
        work / "cells", "--time-column", "age", "--group-columns", "donor", "--keep-obs", "condition", "cell_type",
        "--model-input-size", 64)
    run("data", "paragraphs", work / "cells", "--out", work / "p", "--num-examples", 8000, *years)
    run("data", "paragraphs", work / "cells", "--out", work / "eval", "--num-examples", 2000, "--eval",
        "--task-ratio", 1, *years)
    train_from_recipe(str(ROOT / "configs/temporal/tiny-cpu.yaml"), [
        f"variables.data={work / 'p/train'}", f"variables.eval_data={work / 'p/val'}",
        f"variables.vocab={work / 'v.json'}", "load_path=null", "max_seq_len=256", "model.rope_scaling=null",
        "model.label_scalar=20", "model.additive_penalty=1", "model.time_smoothing=0",
        "model.config_overrides={hidden_size: 128, intermediate_size: 256, num_hidden_layers: 4}",
        "max_duration=600ba", "eval_interval=600ba", "global_train_batch_size=16",
        "device_train_microbatch_size=16", "optimizer.lr=0.001", "scheduler.t_warmup=20ba",
        f"save_folder={work / 'run'}", "save_interval=600ba", "console_log_interval=1000ba", "loggers={}"])
    run("predict", "time", "--checkpoint", work / "run/latest-rank0.pt", "--data", work / "eval/val",
        "--train-data", work / "p/train", "--baseline-columns", "cell_type", "--out", work / "predictions")
    return work / "predictions/metrics.json"


def main(demo: Path) -> None:
    results = {}
    if (demo / "predictions/metrics.json").exists():
        results["HSMM, held-out cells (hours)"] = json.loads((demo / "predictions/metrics.json").read_text())
    else:
        print("no demo model: run `bash scripts/demo.sh` first for the HSMM row")
    results["simulated, held-out donors (years)"] = json.loads(simulated(Path(tempfile.mkdtemp())).read_text())
    for name, metrics in results.items():
        print(f"\n{name}\n{scores_table(metrics)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEMO)
