"""End-to-end tokenization throughput: h5ad on disk -> MDS shards on disk.

Usage: .venv/bin/python benchmarks/tokenize_end_to_end.py [--repeats 5] [--synthetic-cells 200000]
Start-up (imports, worker process start) is excluded for one worker by warming up first; with
several workers the time includes starting them, as a user would see it. Medians and vocabulary are
computed once, outside the timings.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from synthetic_h5ad import write_synthetic_h5ad

from maxtoki.data import ReadOptions, TokenizeOptions, compute_medians, tokenize_files, write_medians
from maxtoki.data.shards.mds import mds_writer_class
from maxtoki.datasets import example_path
from maxtoki.vocab import Vocabulary


def prepare(path: Path, read: ReadOptions, root: Path) -> tuple[Path, Path]:
    medians, _ = compute_medians([path], read=read, workers=2)
    write_medians(medians, root / "medians.json")
    Vocabulary.build(medians).save(root / "vocab.json")
    return root / "vocab.json", root / "medians.json"


def time_runs(path: Path, read: ReadOptions, root: Path, workers: int, repeats: int) -> tuple[float, int]:
    vocab, medians = prepare(path, read, root)
    options = TokenizeOptions(read=read)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        manifest = tokenize_files([path], vocab, medians, str(root / f"{path.stem}-{workers}-{i}"), options=options,
                                  workers=workers)
        times.append(time.perf_counter() - start)
    return statistics.median(times), manifest["cells"]["read"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--synthetic-cells", type=int, default=200_000)
    args = parser.parse_args()
    mds_writer_class()  # warm the import so that start-up is not timed
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seconds, cells = time_runs(example_path("pbmc3k"), ReadOptions(gene_id_column="ensembl_id"), root, 1,
                                   args.repeats)
        print(f"PBMC 3k, 1 worker: {cells / seconds:,.0f} cells/s ({seconds:.2f} s, median of {args.repeats})")
        synthetic = root / "synthetic.h5ad"
        write_synthetic_h5ad(synthetic, args.synthetic_cells)
        for workers in (1, 2):
            seconds, cells = time_runs(synthetic, ReadOptions(), root, workers, max(1, args.repeats // 2))
            print(f"synthetic {cells:,} cells, {workers} worker(s): {cells / seconds:,.0f} cells/s ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
