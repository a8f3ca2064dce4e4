"""Zero-shot goal-state screen on planted truth: does the embedding shift of a stage-1 model (no times) find the
age drivers of simulated donors?

Usage: .venv/bin/python benchmarks/goal_state_screen.py --seeds 0 1 2 [--work /tmp/goal-state]
Per seed: 16 simulated donors at 4 ages (400 genes, 20 planted drivers, 64-token cells), configs/pretrain/
tiny-cpu.yaml for 300 batches on their cells, then `analyze perturb --readout embedding --start-state
age_group=old --goal-state age_group=young` on 50 old cells over the drivers and 40 + 40 controls matched to
them on coverage (tests/helpers/planted_drivers.py); the same screen with a randomly initialised model.
Prints and writes the AUROCs (results.json in --work).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.planted_drivers import aurocs, panel, screen, simulate, train_stage1, untrained_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("/tmp/goal-state-screen"))
    args = parser.parse_args()
    import torch

    from maxtoki.analysis.cells import load_cells
    from maxtoki.inference.loading import load_model

    torch.set_num_threads(1)
    results = []
    for seed in args.seeds:
        root = args.work / f"seed{seed}"
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        simulate(root, seed)
        checkpoint = train_stage1(root)
        trained_s = time.perf_counter() - started
        cells = load_cells(str(root / "cells"), ["age_group", "donor"], time_column=None)
        genes = panel(root, cells)
        started = time.perf_counter()
        trained = aurocs(screen(load_model(str(checkpoint), cells.vocab)[0], cells, root / "screen", genes), genes)
        screen_s = time.perf_counter() - started
        untrained = aurocs(screen(untrained_model(cells.vocab), cells, root / "untrained", genes), genes)
        results.append({"seed": seed, "trained": trained, "untrained": untrained, "train_s": round(trained_s, 1),
                        "screen_s": round(screen_s, 1)})
        print(json.dumps(results[-1]), flush=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
