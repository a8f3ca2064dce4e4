"""Chunked, validated reading of cells from .h5ad, 10x .h5 and in-memory AnnData.

Every source yields row ranges as CSR matrices, so memory is bounded by the chunk size and not by
the file. h5ad files are read through h5py directly (only the slices asked for); obs columns are
read per chunk as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from maxtoki.errors import InputFileError, MaxtokiError

INPUT_SUFFIXES = (".h5ad", ".h5")


@dataclass(frozen=True)
class ReadOptions:
    """Which matrix and gene identifiers of an input to use."""

    gene_id_column: str | None = None  # None: the var index (h5ad) or feature ids (10x)
    layer: str | None = None
    use_raw: bool = False


def expand_inputs(paths) -> list[Path]:
    """Files as given, and the .h5ad/.h5 files inside directories (recursively, sorted)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in INPUT_SUFFIXES and p.is_file())
            if not found:
                raise InputFileError(path, "the directory holds no .h5ad or .h5 files")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in INPUT_SUFFIXES:
                raise InputFileError(path, "unsupported input; give .h5ad files, 10x .h5 files or directories of them")
            files.append(path)
        else:
            raise InputFileError(path, "no such file or directory")
    if not files:
        raise MaxtokiError("no input files given")
    return files


def open_source(path: str | Path, options: ReadOptions = ReadOptions()) -> CellSource:
    """Open an input file as a chunked cell source, choosing the reader from its content."""
    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(path, f"cannot open as HDF5 ({exc}): the file is corrupt, truncated or not an "
                                   ".h5ad/.h5 file. Re-download or re-export it.") from None
    try:
        if "X" in handle and "obs" in handle:
            return H5adSource(path, handle, options)
        if "matrix" in handle or _tenx_v2_group(handle) is not None:
            return TenxH5Source(path, handle, options)
    except BaseException:
        handle.close()
        raise
    handle.close()
    raise InputFileError(path, "neither an AnnData .h5ad (no X/obs) nor a 10x Genomics .h5 (no matrix group)")


class CellSource:
    """Common interface of all readers; subclasses fill in the storage-specific parts."""

    path: Path
    dataset: str
    n_cells: int
    obs_columns: list[str]

    def gene_ids(self) -> list[str]:
        raise NotImplementedError

    def cell_ids(self, start: int, end: int) -> np.ndarray:
        raise NotImplementedError

    def obs_column(self, name: str, start: int, end: int) -> np.ndarray:
        raise NotImplementedError

    def matrix(self, start: int, end: int) -> sp.csr_matrix:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def require_obs_columns(self, names, what: str) -> None:
        missing = [n for n in names if n not in self.obs_columns]
        if missing:
            raise InputFileError(self.path, f"no {what} column {missing[0]!r} in obs; the columns are: "
                                            f"{', '.join(self.obs_columns) or '(none)'}")

    def numeric_obs(self, name: str, start: int, end: int) -> np.ndarray:
        """An obs column as float64, or a clear error if it is not numeric."""
        values = self.obs_column(name, start, end)
        try:
            return pd.to_numeric(pd.Series(values), errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
        except (ValueError, TypeError):
            examples = [v for v in values if not _is_number(v)][:3]
            raise InputFileError(self.path, f"obs column {name!r} must be numeric but holds values such as "
                                            f"{examples}; convert it to numbers first") from None


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


class H5adSource(CellSource):
    def __init__(self, path: Path, handle: h5py.File, options: ReadOptions):
        self.path, self.handle, self.options = path, handle, options
        self.dataset = path.stem
        obs = handle["obs"]
        if not isinstance(obs, h5py.Group):
            raise InputFileError(path, "written by an old anndata (< 0.7); load and re-save it with a current "
                                       "anndata (adata.write_h5ad)")
        self._obs = obs
        self.obs_columns = [str(c) for c in obs.attrs.get("column-order", [])]
        self._matrix_elem, var = self._select_matrix(options)
        self.n_cells, self.n_genes = self._matrix_shape()
        self._var = var
        self._categories: dict[str, np.ndarray] = {}

    def _select_matrix(self, options: ReadOptions):
        handle = self.handle
        if options.layer and options.use_raw:
            raise MaxtokiError("choose either a layer or .raw, not both")
        if options.layer:
            layers = handle.get("layers")
            names = list(layers.keys()) if isinstance(layers, h5py.Group) else []
            if options.layer not in names:
                raise InputFileError(self.path, f"no layer {options.layer!r}; the layers are: "
                                                f"{', '.join(names) or '(none)'}")
            return layers[options.layer], handle["var"]
        if options.use_raw:
            if "raw" not in handle or "X" not in handle["raw"]:
                raise InputFileError(self.path, "has no .raw matrix; drop --use-raw or give --layer")
            return handle["raw/X"], handle["raw/var"]
        return handle["X"], handle["var"]

    def _matrix_shape(self) -> tuple[int, int]:
        elem = self._matrix_elem
        if isinstance(elem, h5py.Dataset):
            if elem.ndim != 2:
                raise InputFileError(self.path, f"the expression matrix has {elem.ndim} dimensions, expected 2")
            return int(elem.shape[0]), int(elem.shape[1])
        encoding = _attr_str(elem, "encoding-type")
        if encoding == "csc_matrix":
            raise InputFileError(self.path, "the matrix is stored column-major (CSC), which cannot be read in row "
                                            "chunks; convert it once with adata.X = adata.X.tocsr() and re-save")
        if encoding != "csr_matrix" or not {"data", "indices", "indptr"} <= set(elem.keys()):
            raise InputFileError(self.path, f"unsupported matrix encoding {encoding!r}; expected CSR or dense")
        shape = elem.attrs.get("shape", elem.attrs.get("h5sparse_shape"))
        return int(shape[0]), int(shape[1])

    def gene_ids(self) -> list[str]:
        var = self._var
        index_name = _attr_str(var, "_index")
        column = self.options.gene_id_column or index_name
        if column not in var:
            columns = [str(c) for c in var.attrs.get("column-order", [])]
            raise InputFileError(self.path, f"no gene-id column {column!r} in var; the columns are: "
                                            f"{', '.join(columns) or '(none)'} (and the index)")
        values = _read_elem_slice(var[column], 0, self.n_genes, self._categories, f"var/{column}")
        return [str(v) for v in values]

    def cell_ids(self, start: int, end: int) -> np.ndarray:
        index_name = _attr_str(self._obs, "_index")
        return _read_elem_slice(self._obs[index_name], start, end, self._categories, "obs-index").astype(str)

    def obs_column(self, name: str, start: int, end: int) -> np.ndarray:
        self.require_obs_columns([name], "obs")
        return self._read(lambda: _read_elem_slice(self._obs[name], start, end, self._categories, f"obs/{name}"),
                          f"obs column {name!r}")

    def matrix(self, start: int, end: int) -> sp.csr_matrix:
        return self._read(lambda: self._matrix_rows(start, end), f"cells {start}..{end}")

    def _matrix_rows(self, start: int, end: int) -> sp.csr_matrix:
        elem = self._matrix_elem
        if isinstance(elem, h5py.Dataset):
            return sp.csr_matrix(elem[start:end])
        indptr = elem["indptr"][start:end + 1].astype(np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        data, indices = elem["data"][lo:hi], elem["indices"][lo:hi]
        return sp.csr_matrix((data, indices, indptr - lo), shape=(end - start, self.n_genes))

    def _read(self, read, what: str):
        try:
            return read()
        except (OSError, KeyError, ValueError) as exc:
            raise InputFileError(self.path, f"reading {what} failed ({exc}): the file is corrupt or truncated. "
                                            "Re-download or re-export it.") from None

    def close(self) -> None:
        self.handle.close()


def _tenx_v2_group(handle: h5py.File):
    for name, group in handle.items():
        if isinstance(group, h5py.Group) and {"barcodes", "data", "indices", "indptr", "genes"} <= set(group.keys()):
            return name
    return None


class TenxH5Source(CellSource):
    """10x Genomics feature-barcode matrix (Cell Ranger v2 and v3+); only 'Gene Expression' features."""

    def __init__(self, path: Path, handle: h5py.File, options: ReadOptions):
        self.path, self.handle, self.options = path, handle, options
        self.dataset = path.stem
        if options.layer or options.use_raw:
            raise InputFileError(path, "a 10x .h5 file has one matrix; --layer and --use-raw do not apply")
        self.group = handle["matrix"] if "matrix" in handle else handle[_tenx_v2_group(handle)]
        self.n_genes, self.n_cells = (int(x) for x in self.group["shape"][:])
        self.obs_columns = []
        self._keep_columns = None
        if "features" in self.group and "feature_type" in self.group["features"]:
            types = self.group["features/feature_type"].asstr()[:]
            if not (types == "Gene Expression").all():
                self._keep_columns = types == "Gene Expression"

    def gene_ids(self) -> list[str]:
        column = self.options.gene_id_column or "id"
        v3 = "features" in self.group
        names = {"id": "features/id" if v3 else "genes", "name": "features/name" if v3 else "gene_names"}
        if column not in names:
            raise InputFileError(self.path, f"no gene-id column {column!r}; a 10x file has 'id' and 'name'")
        ids = self.group[names[column]].asstr()[:]
        if self._keep_columns is not None:
            ids = ids[self._keep_columns]
        return [str(v) for v in ids]

    def cell_ids(self, start: int, end: int) -> np.ndarray:
        return self.group["barcodes"].asstr()[start:end].astype(str)

    def obs_column(self, name: str, start: int, end: int) -> np.ndarray:
        raise InputFileError(self.path, f"no obs column {name!r}: a 10x .h5 file has only barcodes; convert it "
                                        "to .h5ad with the annotations you need")

    def matrix(self, start: int, end: int) -> sp.csr_matrix:
        try:
            group = self.group
            indptr = group["indptr"][start:end + 1].astype(np.int64)
            lo, hi = int(indptr[0]), int(indptr[-1])
            matrix = sp.csr_matrix((group["data"][lo:hi], group["indices"][lo:hi], indptr - lo),
                                   shape=(end - start, self.n_genes))
        except (OSError, KeyError, ValueError) as exc:
            raise InputFileError(self.path, f"reading cells {start}..{end} failed ({exc}): the file is corrupt "
                                            "or truncated") from None
        if self._keep_columns is not None:
            matrix = matrix[:, self._keep_columns]
        return matrix

    def close(self) -> None:
        self.handle.close()


class AnnDataSource(CellSource):
    """An AnnData object already in memory (or opened backed), for notebook use."""

    def __init__(self, adata, options: ReadOptions = ReadOptions(), name: str = "anndata"):
        self.adata, self.options = adata, options
        self.path = Path(f"<AnnData {name}>")
        self.dataset = name
        self.n_cells = adata.n_obs
        self.obs_columns = [str(c) for c in adata.obs.columns]
        if options.layer and options.layer not in adata.layers:
            raise InputFileError(self.path, f"no layer {options.layer!r}; the layers are: "
                                            f"{', '.join(adata.layers.keys()) or '(none)'}")
        if options.use_raw and adata.raw is None:
            raise InputFileError(self.path, "has no .raw matrix; drop use_raw or give a layer")

    def _var(self):
        return self.adata.raw.var if self.options.use_raw else self.adata.var

    def gene_ids(self) -> list[str]:
        var = self._var()
        column = self.options.gene_id_column
        if column is None:
            return [str(v) for v in var.index]
        if column not in var.columns:
            raise InputFileError(self.path, f"no gene-id column {column!r} in var; the columns are: "
                                            f"{', '.join(map(str, var.columns)) or '(none)'} (and the index)")
        return [str(v) for v in var[column]]

    def cell_ids(self, start: int, end: int) -> np.ndarray:
        return np.asarray(self.adata.obs_names[start:end]).astype(str)

    def obs_column(self, name: str, start: int, end: int) -> np.ndarray:
        self.require_obs_columns([name], "obs")
        return self.adata.obs[name].iloc[start:end].to_numpy()

    def matrix(self, start: int, end: int) -> sp.csr_matrix:
        if self.options.layer:
            block = self.adata.layers[self.options.layer][start:end]
        elif self.options.use_raw:
            block = self.adata.raw.X[start:end]
        else:
            block = self.adata.X[start:end]
        return sp.csr_matrix(block)


def _attr_str(elem, name: str) -> str:
    value = elem.attrs.get(name, "")
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_elem_slice(elem, start: int, end: int, cache: dict, key: str) -> np.ndarray:
    """Rows ``start:end`` of an anndata-encoded column (array, strings, categorical, nullable)."""
    if isinstance(elem, h5py.Dataset):
        if elem.dtype.kind in "OS":
            return np.asarray(elem.asstr()[start:end], dtype=object)
        return elem[start:end]
    encoding = _attr_str(elem, "encoding-type")
    if encoding == "categorical":
        if key not in cache:
            cache[key] = _read_elem_slice(elem["categories"], 0, len(elem["categories"]), cache, key + "/c")
        categories = np.asarray(cache[key], dtype=object)
        codes = elem["codes"][start:end].astype(np.int64)
        values = categories[np.clip(codes, 0, None)] if len(categories) else np.full(len(codes), None, object)
        values = np.asarray(values, dtype=object)
        values[codes < 0] = None
        return values
    if encoding.startswith("nullable"):
        values = elem["values"][start:end]
        mask = elem["mask"][start:end]
        if values.dtype.kind in "OS":
            out = np.asarray(elem["values"].asstr()[start:end], dtype=object)
            out[mask] = None
            return out
        out = values.astype(np.float64)
        out[mask] = np.nan
        return out
    raise ValueError(f"unsupported column encoding {encoding!r} for {key}")
