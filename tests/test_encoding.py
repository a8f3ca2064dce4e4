"""Exact token sequences of rank value encoding on small hand-made inputs."""

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import GENES, make_adata

from maxtoki.data import GeneMapping, rank_value_encode, tokenize_anndata

G1, G2, G3, G4, G5 = 4, 5, 6, 7, 8  # token ids of GENES[0..4]
BOS, EOS = 2, 3


def encode(adata, vocab, medians, **kwargs):
    result = tokenize_anndata(adata, vocab, medians, **kwargs)
    return [ids.tolist() for ids in result.input_ids], result


def test_ranks_by_scaled_value_with_ties_by_token_id(tiny_vocab, tiny_medians):
    # values count/median: G1 2, G2 2, G3 1, G4 0 (absent), G5 3 -> G5, then G1/G2 tied -> by id, then G3
    cells, result = encode(make_adata([[2, 4, 1, 0, 3]]), tiny_vocab, tiny_medians)
    assert cells == [[BOS, G5, G1, G2, G3, EOS]]
    assert result.obs.index.tolist() == ["cell0"]
    assert result.obs["length"].tolist() == [6]


def test_median_scaling_lifts_low_median_genes(tiny_vocab, tiny_medians):
    # G4 has median 0.5: one count of G4 (value 2) outranks one count of G1 (value 1)
    cells, _ = encode(make_adata([[1, 0, 0, 1, 0]]), tiny_vocab, tiny_medians)
    assert cells == [[BOS, G4, G1, EOS]]


def test_truncation_keeps_the_top_genes(tiny_vocab, tiny_medians):
    cells, _ = encode(make_adata([[2, 4, 1, 0, 3]]), tiny_vocab, tiny_medians, model_input_size=4)
    assert cells == [[BOS, G5, G1, EOS]]


def test_duplicated_and_versioned_ids_are_summed(tiny_vocab, tiny_medians):
    var = ["ensg00000000001.3", "ENSG00000000001.7", "ENSG00000000002", "ENSG00000000003.1_PAR_Y"]
    # G1 = 1 + 2 = 3 beats G2 (4 / 2 = 2) and G3 (1)
    cells, _ = encode(make_adata([[1, 2, 4, 1]], var_names=var), tiny_vocab, tiny_medians)
    assert cells == [[BOS, G1, G2, G3, EOS]]


def test_empty_and_filtered_cells_are_dropped_and_counted(tiny_vocab, tiny_medians):
    counts = [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 5], [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]]
    var = GENES + ["ENSG99999999999"]  # last gene is not in the vocabulary
    adata = make_adata(counts, var_names=var, obs={"filter_pass": [1, 1, 1, 0, 1]})
    cells, result = encode(adata, tiny_vocab, tiny_medians)
    assert cells == [[BOS, G1, EOS], [BOS, G3, EOS]]
    assert result.obs.index.tolist() == ["cell0", "cell4"]
    assert result.dropped == {"zero_counts": 1, "no_vocabulary_gene": 1, "filter_pass": 1}


def test_symbols_mapped_to_ensembl(tiny_vocab, tiny_medians):
    mapping = GeneMapping({"GENE1": [GENES[0]], "GENE5": [GENES[4]], "AMBIG": ["ENSG00000000000", GENES[2]]})
    adata = make_adata([[1, 5, 2, 7]], var_names=["gene1", "Gene5", "AMBIG", "UNKNOWN"])
    cells, _ = encode(adata, tiny_vocab, tiny_medians, gene_mapping=mapping)
    # AMBIG resolves to the ID in the vocabulary (G3); UNKNOWN is ignored
    assert cells == [[BOS, G5, G3, G1, EOS]]


def test_gene_id_column_time_group_and_kept_obs(tiny_vocab, tiny_medians):
    adata = make_adata([[0, 1], [3, 0]], var_names=["a", "b"],
                       obs={"age": [30.0, 45.5], "donor": ["d1", "d2"], "tissue": ["lung", "skin"], "sex": ["F", "M"]})
    adata.var["ensembl"] = [GENES[0], GENES[1]]
    cells, result = encode(adata, tiny_vocab, tiny_medians, gene_id_column="ensembl", time_column="age",
                           group_columns=["donor", "tissue"], keep_obs=["sex"])
    assert cells == [[BOS, G2, EOS], [BOS, G1, EOS]]
    assert result.obs["time"].tolist() == [30.0, 45.5]
    assert result.obs["group"].tolist() == ["d1|lung", "d2|skin"]
    assert result.obs["sex"].tolist() == ["F", "M"]


def test_min_expression_drops_estimation_noise(tiny_vocab, tiny_medians):
    adata = make_adata([[1e-40, 5.5, 0.05, 0.2, 0]])
    cells, _ = encode(adata, tiny_vocab, tiny_medians, allow_non_integer=True)
    assert cells == [[BOS, G2, G4, G3, G1, EOS]]
    cells, _ = encode(adata, tiny_vocab, tiny_medians, allow_non_integer=True, min_expression=0.1)
    assert cells == [[BOS, G2, G4, EOS]]
    assert adata.X.data[0] == np.float32(1e-40)  # the caller's data is untouched


def test_layer_and_raw(tiny_vocab, tiny_medians):
    adata = make_adata([[1, 0, 0, 0, 9]])
    adata.layers["counts"] = sp.csr_matrix(np.array([[9, 0, 0, 0, 1]], dtype=np.float32))
    adata.raw = make_adata([[0, 9, 0, 0, 1]])
    assert encode(adata, tiny_vocab, tiny_medians)[0] == [[BOS, G5, G1, EOS]]
    assert encode(adata, tiny_vocab, tiny_medians, layer="counts")[0] == [[BOS, G1, G5, EOS]]
    assert encode(adata, tiny_vocab, tiny_medians, use_raw=True)[0] == [[BOS, G2, G5, EOS]]


def test_differences_below_float32_precision_are_ranked_exactly(tiny_vocab):
    # G2's median is smaller by 1e-12, so its value is larger: exact order is G2 before G1,
    # although both round to the same float32.
    medians = {GENES[0]: 1.0 + 1e-12, GENES[1]: 1.0, GENES[2]: 1.0, GENES[3]: 1.0, GENES[4]: 1.0}
    cells, _ = encode(make_adata([[3, 3, 1, 3, 0]]), tiny_vocab, medians)
    assert cells == [[BOS, G2, G4, G1, G3, EOS]]


@pytest.mark.parametrize("median_kind", ["exact_ties", "below_float32", "lognormal"])
def test_matches_a_plain_python_reference_on_random_data(median_kind):
    rng = np.random.default_rng(7)
    n_cells, n_genes = 300, 400
    dense = rng.poisson(0.3, size=(n_cells, n_genes)).astype(np.float64)
    dense[5] = 0
    matrix = sp.csr_matrix(dense)
    token_ids = rng.permutation(n_genes) + 4
    medians = {"exact_ties": rng.choice([0.5, 1.0, 2.0], size=n_genes),
               "below_float32": 1.0 + rng.integers(0, 3, size=n_genes) * 1e-12,  # ties only in float32
               "lognormal": rng.lognormal(0, 1, size=n_genes)}[median_kind]
    n_counts = dense.sum(axis=1)
    encoded = rank_value_encode(matrix, n_counts, token_ids, medians, 60, BOS, EOS)
    for cell in range(n_cells):
        genes = np.flatnonzero(dense[cell])
        values = dense[cell, genes] / n_counts[cell] * 10_000 / medians[genes]
        ranked = sorted(zip(-values, token_ids[genes]))[:58]
        expected = [BOS, *[int(t) for _, t in ranked], EOS] if len(genes) else []
        assert encoded[cell].tolist() == expected, cell


@pytest.mark.parametrize("n_cells", [70_000])
def test_blocks_larger_than_the_key_range(n_cells):
    matrix = sp.csr_matrix((np.ones(n_cells), np.zeros(n_cells, dtype=np.int32), np.arange(n_cells + 1)),
                           shape=(n_cells, 1))
    encoded = rank_value_encode(matrix, np.ones(n_cells), np.array([4]), np.array([1.0]), 10, BOS, EOS)
    assert len(encoded) == n_cells and encoded[n_cells - 1].tolist() == [BOS, 4, EOS]
