"""Gene medians: sketch accuracy against exact medians on real data, mergeability, n_counts."""

import json

import anndata as ad
import numpy as np
import pytest
from conftest import GENES

from maxtoki.cli import main
from maxtoki.data import ReadOptions, compute_medians, normalize_gene_id


@pytest.fixture(scope="module")
def pbmc_exact(pbmc_path):
    """Exact medians of non-zero normalized expression, and the number of expressing cells."""
    adata = ad.read_h5ad(pbmc_path)
    matrix = adata.X.tocsr().astype(np.float64)
    n_counts = np.asarray(matrix.sum(axis=1)).ravel()
    normalized = matrix.multiply(1 / n_counts[:, None]).multiply(10_000).tocsc()
    genes = [normalize_gene_id(g) for g in adata.var["ensembl_id"]]
    exact, cells = {}, {}
    for j, gene in enumerate(genes):
        column = normalized.data[normalized.indptr[j]:normalized.indptr[j + 1]]
        if len(column):
            exact[gene], cells[gene] = float(np.median(column)), len(column)
    return exact, cells


@pytest.fixture(scope="module")
def pbmc_medians(pbmc_path):
    return compute_medians([pbmc_path], read=ReadOptions(gene_id_column="ensembl_id"), chunk_size=500)


def test_within_one_percent_of_exact_medians_on_pbmc(pbmc_exact, pbmc_medians):
    exact, cells = pbmc_exact
    medians, summary = pbmc_medians
    assert summary["cells_used"] == 2700
    assert set(medians) == set(exact)
    checked = [g for g in exact if cells[g] >= 20]
    assert len(checked) > 5000
    errors = np.array([abs(medians[g] / exact[g] - 1) for g in checked])
    assert errors.max() <= 0.005  # the sketch's bound, well inside the required 1%
    every = np.array([abs(medians[g] / exact[g] - 1) for g in exact])
    assert every.max() <= 0.005


def test_parallel_and_chunking_do_not_change_the_result(pbmc_path, pbmc_medians):
    medians, _ = pbmc_medians
    parallel, summary = compute_medians([pbmc_path, pbmc_path], read=ReadOptions(gene_id_column="ensembl_id"),
                                        workers=2, chunk_size=1234)
    assert summary["cells_used"] == 5400
    assert parallel == medians  # two copies of the data have the same medians


def test_n_counts_from_obs_and_filter_pass(tmp_path):
    counts = np.array([[2, 2], [1, 3], [4, 0]], dtype=np.float32)
    adata = ad.AnnData(counts, var=__import__("pandas").DataFrame(index=GENES[:2]))
    adata.obs_names = ["a", "b", "c"]
    adata.obs["n_counts"] = [10.0, 10.0, 10.0]
    adata.obs["filter_pass"] = [1, 1, 0]
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "medians.json"
    assert main(["data", "medians", str(path), "--out", str(out)]) == 0
    medians = json.loads(out.read_text())
    # cell c fails filter_pass; with n_counts = 10: G1 values 2000, 1000 -> 1500; G2 values 2000, 3000 -> 2500
    assert medians[GENES[0]] == pytest.approx(1500, rel=0.005)
    assert medians[GENES[1]] == pytest.approx(2500, rel=0.005)
