"""Are generated cells like real cells of their target time, and single cells? `maxtoki generate` with its
evaluation, greedy and sampled, on the bundled time course and on simulated donors (benchmarks/README.md).

    ../.venv/bin/python generated_cells.py demo DEMO_OUTPUT WORK        # NextCell prompts of the demo's held-out cells
    ../.venv/bin/python generated_cells.py simulate WORK [BATCHES]      # simulated donors, a tiny model (500 batches)
    ../.venv/bin/python generated_cells.py judge CHECKPOINT EVAL OUT    # greedy, then sampled with seeds 0 1 2
    ../.venv/bin/python generated_cells.py table OUT                    # the table again, from OUT/results.json

`demo` makes NextCell evaluation paragraphs with the options of `maxtoki pipeline` (so the same fifth of
the cells of every time point is held out); `simulate` writes donors at six ages, trains a tiny model
from scratch on the donors of the train split, and makes NextCell paragraphs of the held-out donors.
"""

import json
import statistics
import sys
from pathlib import Path

from maxtoki.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (0, 1, 2)


def run(*argv) -> None:
    if cli([str(a) for a in argv]) != 0:
        sys.exit(f"failed: maxtoki {' '.join(map(str, argv))}")


def demo(demo_output: str, work: str) -> None:
    run("data", "paragraphs", Path(demo_output) / "cells", "--out", Path(work) / "eval", "--eval", "--task-ratio", 0,
        "--holdout-fraction", 0.2, "--seed", 0, "--min-timepoints", 2, "--max-timepoints", 2, "--max-seq-len", 520,
        "--time-scale", 1, "--num-examples", 1000, "--overwrite")


def simulate(work: str, batches: str = "500") -> None:
    from maxtoki.training import train_from_recipe

    root = Path(work)
    root.mkdir(parents=True, exist_ok=True)
    run("data", "simulate", "--out", root / "sim.h5ad", "--donors", 30, "--ages-per-donor", 4, "--min-age", 0,
        "--max-age", 5, "--cells-per-sample", 20, "--genes", 400, "--seed", 3)
    run("data", "medians", root / "sim.h5ad", "--out", root / "m.json")
    run("data", "vocab", "--medians", root / "m.json", "--out", root / "v.json", "--max-time", 10)
    run("data", "tokenize", root / "sim.h5ad", "--vocab", root / "v.json", "--medians", root / "m.json", "--out",
        root / "cells", "--time-column", "age", "--group-columns", "donor", "--model-input-size", 64, "--overwrite")
    split = ("--split", "train=0.8,test=0.2", "--min-timepoints", 2, "--max-timepoints", 2, "--max-seq-len", 136,
             "--seed", 1, "--overwrite")
    run("data", "paragraphs", root / "cells", "--out", root / "p", "--num-examples", 8000, *split)
    run("data", "paragraphs", root / "cells", "--out", root / "eval", "--eval", "--task-ratio", 0, "--num-examples",
        1500, *split)
    train_from_recipe(str(ROOT / "configs/temporal/tiny-cpu.yaml"), [
        f"variables.data={root / 'p/train'}", f"variables.eval_data={root / 'p/test'}",
        f"variables.vocab={root / 'v.json'}", "load_path=null", "max_seq_len=136", "model.rope_scaling=null",
        "model.label_scalar=2", "model.additive_penalty=1", "model.time_smoothing=0",
        "model.config_overrides={hidden_size: 128, intermediate_size: 256, num_hidden_layers: 4}",
        f"max_duration={batches}ba", f"eval_interval={batches}ba", "global_train_batch_size=16",
        "device_train_microbatch_size=16",
        "optimizer.lr=0.001", "scheduler.t_warmup=20ba", f"save_folder={root / f'run{batches}'}",
        f"save_interval={batches}ba",
        "console_log_interval=1000ba"])
    print(f"checkpoint {root / f'run{batches}/latest-rank0.pt'}; evaluation paragraphs {root / 'eval/test'}")


def judge(checkpoint: str, data: str, out: str) -> None:
    from maxtoki.inference.generate import Sampling, generate

    results = {"greedy": generate(checkpoint, data, Path(out) / "greedy", Sampling(), 32)["evaluation"]}
    for seed in SEEDS:
        results[f"sampled seed {seed}"] = generate(checkpoint, data, Path(out) / f"sampled{seed}",
                                                   Sampling(greedy=False, seed=seed), 32)["evaluation"]
    (Path(out) / "results.json").write_text(json.dumps(results, indent=2))
    table(out)


def table(out: str) -> None:
    """The recorded table, from the results.json that `judge` wrote into OUT."""
    results = json.loads((Path(out) / "results.json").read_text())
    first = results["greedy"]
    print(f"\n{first['examples']} NextCell prompts, {first['reference_cells']} real held-out cells at times "
          f"{', '.join(first['reference_times'])}; chance accuracy {first['chance_accuracy']:.2f}")
    print("| cells | genes | time accuracy | MAE of implied time | similarity to nearest real cell | singlet share |")
    print("|---|---|---|---|---|---|")
    sampled = [results[f"sampled seed {s}"] for s in SEEDS]
    rows = [("generated, greedy", [first], "generated"),
            ("generated, sampled (T=1; median of 3 seeds)", sampled, "generated"),
            ("baseline: copy last context cell", [first], "copy_last_context_cell"),
            ("ceiling: real response cell", [first], "real_response_cell")]
    for label, runs, key in rows:
        def median(read):
            return statistics.median(read(r) for r in runs)

        singlets = median(lambda r: r["singlets"]["generated"]) if key == "generated" else \
            first["singlets"]["real_held_out_cells"] if key == "real_response_cell" else None
        print(f"| {label} | {median(lambda r: r['genes_per_cell'][key]):.0f} "
              f"| {median(lambda r: r['time'][key]['accuracy']):.2f} | {median(lambda r: r['time'][key]['mae']):.2f} "
              f"| {median(lambda r: r['nearest_real_similarity'][key]):.2f} "
              f"| {'-' if singlets is None else f'{singlets:.2f}'} |")
    print(f"| control: simulated doublets | | | | | {first['singlets']['simulated_doublets']:.2f} |")

if __name__ == "__main__":
    commands = {"demo": demo, "simulate": simulate, "judge": judge, "table": table}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
