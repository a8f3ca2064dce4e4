"""`maxtoki pipeline` on the bundled HSMM time course, several seeds: the model and every baseline on
the held-out cells, and the median over seeds (what benchmarks/README.md records).

    ../.venv/bin/python pipeline_seeds.py [SEEDS...] [-- PIPELINE OPTIONS...]   # default seeds 0 1 2

A seed changes which cells are held out, the paragraphs and the training order. Options after ``--`` go to
`maxtoki pipeline` as they are (e.g. ``-- --cell-length 1024``), for the experiments benchmarks/README.md records.
"""

import json
import statistics
import sys
import tempfile
from pathlib import Path

from maxtoki.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
HSMM = ROOT / "maxtoki/datasets/hsmm_myoblast_timecourse.h5ad"
ROWS = {"model": "model (expected value)", "baseline_training_mean": "training-mean Δ",
        "baseline_most_common_time": "most common time of kind", "baseline_linear": "linear regressor",
        "baseline_ceiling": "ceiling: per-cell clock"}


def main(seeds: list[int], options: list[str]) -> None:
    runs = []
    for seed in seeds:
        out = Path(tempfile.mkdtemp(prefix=f"pipeline-seed{seed}-"))
        if cli(["pipeline", str(HSMM), "--time-column", "hours", "--allow-non-integer", "--min-expression", "0.1",
                "--seed", str(seed), "--out", str(out), *options]) != 0:
            sys.exit(f"seed {seed}: the pipeline failed")
        runs.append(json.loads((out / "predictions" / "metrics.json").read_text()))
    print(f"\nHSMM held-out cells, seeds {seeds}, options {' '.join(options) or 'none'}: MAE (h) and Pearson r per "
          "seed, then the median")
    for key, name in ROWS.items():
        mae = [run[key]["mae"] for run in runs]
        r = [run[key]["pearson_r"] for run in runs]
        per_seed = ", ".join(f"{m:.1f}" + ("" if p != p else f" / {p:.2f}") for m, p in zip(mae, r))
        median_r = "-" if any(p != p for p in r) else f"{statistics.median(r):.2f}"
        print(f"  {name:<24} {per_seed:<40} median {statistics.median(mae):.1f} / {median_r}")
    coverage = [run["calibrated"]["coverage"] for run in runs if "calibrated" in run]
    print("  calibrated 80% intervals hold: " + ", ".join(f"{c:.0%}" for c in coverage))
    print("  seconds per run: " + ", ".join(str(run["pipeline"]["seconds"]) for run in runs))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    split = arguments.index("--") if "--" in arguments else len(arguments)
    main([int(s) for s in arguments[:split]] or [0, 1, 2], arguments[split + 1:])
