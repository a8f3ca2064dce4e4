"""Paragraph writing speed and memory on simulated cells.

Usage: .venv/bin/python benchmarks/paragraphs_throughput.py [--donors 250] [--examples 20000] [--repeats 3]
Simulates donors x 8 ages x 50 cells (250 donors: 100,000 cells, 2,000 genes), tokenizes them, then
times `maxtoki data paragraphs` as a whole command (index pass over the cells, sampling, writing)
with 1 and 2 workers; reports paragraph tokens written per second and the command's peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAXTOKI = [sys.executable, "-m", "maxtoki.cli", "data"]


def run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one command."""
    start = time.perf_counter()
    process = subprocess.Popen(MAXTOKI + args, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"failed: {args}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--donors", type=int, default=250)
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seconds, _ = run(["simulate", "--out", str(root / "sim.h5ad"), "--donors", str(args.donors),
                          "--ages-per-donor", "8", "--cells-per-sample", "50"])
        cells = args.donors * 8 * 50
        print(f"simulate: {cells:,} cells in {seconds:.1f} s ({cells / seconds:,.0f} cells/s)")
        run(["medians", str(root / "sim.h5ad"), "--out", str(root / "m.json"), "--workers", "2"])
        run(["vocab", "--medians", str(root / "m.json"), "--out", str(root / "v.json")])
        run(["tokenize", str(root / "sim.h5ad"), "--vocab", str(root / "v.json"), "--medians", str(root / "m.json"),
             "--out", str(root / "cells"), "--time-column", "age", "--group-columns", "donor", "--workers", "2"])
        for workers in (1, 2):
            results = []
            for i in range(args.repeats):
                out = root / f"p{workers}-{i}"
                seconds, peak = run(["paragraphs", str(root / "cells"), "--out", str(out), "--num-examples",
                                     str(args.examples), "--workers", str(workers)])
                tokens = json.loads((out / "manifest.json").read_text())["tokens"]
                results.append((seconds, peak, tokens))
            seconds = statistics.median(r[0] for r in results)
            peak = max(r[1] for r in results)
            tokens = results[0][2]
            print(f"paragraphs, {workers} worker(s): {args.examples:,} examples, {tokens / 1e6:.1f} M tokens in "
                  f"{seconds:.1f} s = {tokens / seconds / 1e6:.2f} M tokens/s (median of {args.repeats}); "
                  f"peak memory {peak:,.0f} MB")


if __name__ == "__main__":
    main()
