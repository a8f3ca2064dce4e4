"""Write a large cells x genes count matrix to .h5ad block by block, never holding it whole."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp


class BlockH5adWriter:
    """Append CSR row blocks; ``close`` writes obs, var and uns. The file is a standard h5ad."""

    def __init__(self, path: str | Path, n_genes: int, dtype=np.float32):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.tmp, "w")
        self.file.attrs["encoding-type"], self.file.attrs["encoding-version"] = "anndata", "0.1.0"
        group = self.file.create_group("X")
        group.attrs["encoding-type"], group.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        self.group, self.n_genes, self.n_cells, self.nnz = group, n_genes, 0, 0
        self.data = group.create_dataset("data", (0,), dtype=dtype, maxshape=(None,), chunks=(1 << 18,))
        self.indices = group.create_dataset("indices", (0,), dtype=np.int32, maxshape=(None,), chunks=(1 << 18,))
        self.indptr = [np.zeros(1, dtype=np.int64)]

    def append(self, block: sp.csr_matrix) -> None:
        block = sp.csr_matrix(block)
        lo, hi = self.nnz, self.nnz + block.nnz
        for dataset, values in ((self.data, block.data), (self.indices, block.indices)):
            dataset.resize((hi,))
            dataset[lo:hi] = values
        self.indptr.append(block.indptr[1:].astype(np.int64) + lo)
        self.nnz, self.n_cells = hi, self.n_cells + block.shape[0]

    def close(self, obs: pd.DataFrame, var: pd.DataFrame, uns: dict | None = None) -> None:
        from anndata.io import write_elem  # importing anndata takes 0.2 s; `import maxtoki.data` need not pay it

        if len(obs) != self.n_cells or len(var) != self.n_genes:
            raise ValueError("obs and var must match the matrix written")
        self.group.create_dataset("indptr", data=np.concatenate(self.indptr))
        self.group.attrs["shape"] = (self.n_cells, self.n_genes)
        write_elem(self.file, "obs", obs)
        write_elem(self.file, "var", var)
        write_elem(self.file, "uns", uns or {})
        self.file.close()
        self.tmp.replace(self.path)
