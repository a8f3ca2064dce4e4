"""Peak memory of `maxtoki data medians` and `maxtoki data tokenize` against input size.

Usage: .venv/bin/python benchmarks/tokenize_memory.py [--cells 25000 100000 200000] [--chunk-size 2048]
Each command runs in its own process; its peak resident memory (ru_maxrss) is read with wait4.
Flat numbers across input sizes mean memory is bounded by the chunk size, not the file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from synthetic_h5ad import write_synthetic_h5ad

MAXTOKI = [sys.executable, "-m", "maxtoki.cli"]


def peak_rss_mb(command: list[str]) -> float:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"failed: {' '.join(command)}")
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, nargs="+", default=[25_000, 100_000, 200_000])
    parser.add_argument("--chunk-size", type=int, default=2048)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n_cells in args.cells:
            path = root / f"cells{n_cells}.h5ad"
            write_synthetic_h5ad(path, n_cells)
            chunk = ["--chunk-size", str(args.chunk_size)]
            medians_mb = peak_rss_mb(MAXTOKI + ["data", "medians", str(path), "--out", str(root / "m.json")] + chunk)
            subprocess.run(MAXTOKI + ["data", "vocab", "--medians", str(root / "m.json"), "--out",
                                      str(root / "v.json")], check=True, stdout=subprocess.DEVNULL)
            tokenize_mb = peak_rss_mb(MAXTOKI + ["data", "tokenize", str(path), "--vocab", str(root / "v.json"),
                                                 "--medians", str(root / "m.json"), "--out",
                                                 str(root / f"out{n_cells}")] + chunk)
            size_mb = path.stat().st_size / 1e6
            print(f"{n_cells:>8,} cells ({size_mb:,.0f} MB h5ad): medians peak {medians_mb:,.0f} MB, "
                  f"tokenize peak {tokenize_mb:,.0f} MB")
            path.unlink()


if __name__ == "__main__":
    main()
