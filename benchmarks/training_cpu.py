"""CPU training throughput of the tiny model, and data-loader throughput on the same shards.

Usage: .venv/bin/python benchmarks/training_cpu.py [--batches 30]
Tokenizes simulated cells to 512 tokens, then (1) iterates the stage-1 loader alone and (2) trains
the tiny model with configs/pretrain/tiny-cpu.yaml, reading Composer's SpeedMonitor tokens/s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def maxtoki(*args) -> None:
    subprocess.run([sys.executable, "-m", "maxtoki.cli", "data", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        maxtoki("simulate", "--out", root / "sim.h5ad", "--donors", 40, "--cells-per-sample", 50)
        maxtoki("medians", root / "sim.h5ad", "--out", root / "m.json")
        maxtoki("vocab", "--medians", root / "m.json", "--out", root / "v.json")
        maxtoki("tokenize", root / "sim.h5ad", "--vocab", root / "v.json", "--medians", root / "m.json",
                "--out", root / "cells", "--model-input-size", 512)

        from maxtoki.data.loaders import build_cells_loader

        spec = build_cells_loader(dataset={"remote": str(root / "cells"), "vocab": str(root / "v.json"),
                                           "max_seq_len": 512, "shuffle": True}, device_batch_size=16)
        start, tokens, batches = time.perf_counter(), 0, 0
        for batch in spec.dataloader:
            tokens += int(batch["attention_mask"].sum())
            batches += 1
        seconds = time.perf_counter() - start
        print(f"loader: {batches} batches of 16 cells, {tokens / seconds:,.0f} tokens/s")

        from composer.loggers import InMemoryLogger

        from maxtoki.training import train_from_recipe

        trainer = train_from_recipe(str(ROOT / "configs/pretrain/tiny-cpu.yaml"), [
            f"variables.data={root / 'cells'}", f"variables.vocab={root / 'v.json'}", f"save_folder={root / 'run'}",
            f"max_duration={args.batches}ba", f"eval_interval={args.batches}ba", f"save_interval={args.batches}ba",
            "eval_subset_num_batches=1", "loggers={inmemory: {}}", "console_log_interval=1000ba"])
        logger = next(d for d in trainer.logger.destinations if isinstance(d, InMemoryLogger))
        rates = [float(v) for _, v in logger.data["throughput/tokens_per_sec"]]
        print(f"training (tiny, batch 16 x 512, fp32, {args.batches} batches): "
              f"{sorted(rates)[len(rates) // 2]:,.0f} tokens/s (median over the run)")


if __name__ == "__main__":
    main()
