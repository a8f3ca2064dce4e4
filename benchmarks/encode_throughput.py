"""Encode-step throughput: rank value encoding of in-memory CSR chunks (no I/O).

Usage: .venv/bin/python benchmarks/encode_throughput.py [--repeats 7]
Reports the median over repeats of non-zero entries and cells encoded per second on one core,
for the bundled PBMC 3k counts and for a synthetic matrix with denser cells.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anndata as ad
import numpy as np
import scipy.sparse as sp

from maxtoki.data.cells.encoding import rank_value_encode
from maxtoki.datasets import example_path


def time_encoding(matrix: sp.csr_matrix, chunk: int, repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    n_genes = matrix.shape[1]
    token_ids = rng.permutation(n_genes) + 4
    medians = rng.lognormal(0, 1, n_genes)
    n_counts = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
    blocks = [(matrix[i:i + chunk], n_counts[i:i + chunk]) for i in range(0, matrix.shape[0], chunk)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for block, counts in blocks:
            rank_value_encode(block, counts, token_ids, medians, 4096, 2, 3)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return matrix.nnz / seconds, matrix.shape[0] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=2048)
    args = parser.parse_args()
    pbmc = ad.read_h5ad(example_path("pbmc3k")).X.tocsr()
    pbmc = sp.vstack([pbmc] * 4).tocsr()  # 10,800 cells: long enough to time
    rng = np.random.default_rng(1)
    synthetic = sp.random(20_000, 20_000, density=0.1, format="csr", random_state=rng,
                          data_rvs=lambda n: rng.poisson(2, n) + 1).astype(np.float32)
    for name, matrix in (("PBMC 3k (x4)", pbmc), ("synthetic 20k cells x 2,000 genes/cell", synthetic)):
        nnz_per_s, cells_per_s = time_encoding(matrix, args.chunk, args.repeats)
        print(f"{name}: {matrix.nnz:,} non-zeros, {nnz_per_s / 1e6:.1f} M non-zeros/s, {cells_per_s:,.0f} cells/s "
              f"(median of {args.repeats})")


if __name__ == "__main__":
    main()
