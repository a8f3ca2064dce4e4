"""Large count matrices written straight to .h5ad in row blocks (never whole in memory)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from anndata.io import write_elem


def write_synthetic_h5ad(path: Path, n_cells: int, n_genes: int = 20_000, genes_per_cell: int = 850,
                         block: int = 10_000, seed: int = 0) -> None:
    """PBMC-like sparsity: ``genes_per_cell`` distinct genes per cell with Poisson(1.5) + 1 counts."""
    rng = np.random.default_rng(seed)
    stride = n_genes // genes_per_cell
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        group = f.create_group("X")
        group.attrs["encoding-type"], group.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        group.attrs["shape"] = (n_cells, n_genes)
        nnz = n_cells * genes_per_cell
        data = group.create_dataset("data", (nnz,), dtype=np.float32, chunks=(1 << 20,))
        indices = group.create_dataset("indices", (nnz,), dtype=np.int32, chunks=(1 << 20,))
        group.create_dataset("indptr", data=np.arange(n_cells + 1, dtype=np.int64) * genes_per_cell)
        for lo in range(0, n_cells, block):
            hi = min(lo + block, n_cells)
            # one gene in each window of `stride` genes: distinct and sorted without a sort
            cols = np.arange(genes_per_cell) * stride + rng.integers(0, stride, (hi - lo, genes_per_cell))
            indices[lo * genes_per_cell:hi * genes_per_cell] = cols.ravel()
            data[lo * genes_per_cell:hi * genes_per_cell] = rng.poisson(1.5, cols.size) + 1
        write_elem(f, "obs", pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]))
        write_elem(f, "var", pd.DataFrame(index=[f"ENSG{i:011d}" for i in range(n_genes)]))
