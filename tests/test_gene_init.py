"""Gene embeddings from the principal axes of the cells' rank value encodings: the loadings equal a dense SVD's,
only the genes the cells hold are set, at the model's initialisation spread, and the recipe key refuses what it
cannot do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maxtoki.errors import MaxtokiError
from maxtoki.inference.ceiling_baseline import rank_score_matrix
from maxtoki.model.gene_init import init_gene_embeddings, principal_gene_loadings
from maxtoki.vocab import Vocabulary


def random_cells(vocab: Vocabulary, count: int, genes: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    pool = vocab.gene_ids[:genes]
    return [rng.choice(pool, rng.integers(5, 15), replace=False).astype(np.int64) for _ in range(count)]


def test_loadings_are_the_principal_axes_of_the_centred_rank_scores():
    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(1, 61)], max_time=10)
    cells = random_cells(vocab, 30, 40)
    seen, loadings = principal_gene_loadings(cells, vocab, 8)
    dense = rank_score_matrix(cells, vocab).toarray()
    np.testing.assert_array_equal(seen, np.flatnonzero(dense.any(axis=0)))
    centred = dense[:, seen] - dense[:, seen].mean(axis=0)
    _, values, axes = np.linalg.svd(centred, full_matrices=False)
    expected = axes[:8].T * values[:8]
    np.testing.assert_allclose(np.abs(loadings), np.abs(expected), atol=1e-8)  # axes are defined up to sign
    # fewer cells than dimensions: as many axes as the cells span, the rest 0
    _, few = principal_gene_loadings(cells[:4], vocab, 8)
    assert np.abs(few[:, :3]).sum(axis=0).min() > 0 and not few[:, 3:].any()


def test_only_the_genes_of_the_cells_are_set_at_the_initialisation_spread(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    import maxtoki.model.gene_init as gene_init
    from maxtoki.model.sizes import llama_config

    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(1, 61)], max_time=10)
    cells = random_cells(vocab, 30, 40)
    monkeypatch.setattr(gene_init, "cell_gene_lists", lambda location, vocabulary: cells)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", len(vocab), 64, vocab.pad_id, vocab.bos_id, vocab.eos_id))
    before = model.get_input_embeddings().weight.detach().clone()
    init_gene_embeddings(model, "cells/", vocab, axes=5)
    after = model.get_input_embeddings().weight.detach()
    seen, main = principal_gene_loadings(cells, vocab, 5)
    loadings = np.zeros((len(seen), 64))
    loadings[:, :5] = main  # the main axes only, 0 in the other dimensions
    unseen = np.setdiff1d(np.arange(len(before)), seen)
    assert torch.equal(after[unseen], before[unseen])  # specials, time tokens, genes no cell holds
    assert float(after[seen].std()) == pytest.approx(model.config.initializer_range, rel=0.05)
    np.testing.assert_allclose(after[seen].numpy(), loadings * model.config.initializer_range / loadings.std(),
                               rtol=1e-5, atol=1e-7)


def test_the_recipe_key_refuses_a_pretrained_model_and_meta_initialisation(tmp_path):
    from transformers import LlamaForCausalLM

    from maxtoki.model.composer_model import MaxTokiPretrainModel
    from maxtoki.model.sizes import llama_config

    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(1, 61)], max_time=10)
    vocab.save(tmp_path / "vocab.json")
    with pytest.raises(MaxtokiError, match="model.gene_embeddings_from starts a model from scratch"):
        MaxTokiPretrainModel(None, str(tmp_path / "vocab.json"), pretrained=str(tmp_path / "model"),
                             gene_embeddings_from=str(tmp_path / "cells"))
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config("tiny", len(vocab), 64))
    with pytest.raises(MaxtokiError, match="needs the model built on a device"):
        init_gene_embeddings(model, str(tmp_path / "cells"), vocab)
