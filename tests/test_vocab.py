import json
import pickle

import numpy as np
import pytest

from maxtoki.errors import MaxtokiError
from maxtoki.vocab import Vocabulary


def test_built_layout_matches_the_released_dictionary():
    genes = ["ENSG00000000005", "ENSG00000000003", "ENSG00000000419"]
    vocab = Vocabulary.build(genes + genes[:1], max_time=3)
    expected = ["<pad>", "<mask>", "<bos>", "<eos>", "ENSG00000000003", "ENSG00000000005", "ENSG00000000419",
                "-3", "-2", "-1", "0", "1", "2", "<boq>", "<eoq>"]
    assert [vocab.token(i) for i in range(len(vocab))] == expected
    assert (vocab.pad_id, vocab.mask_id, vocab.bos_id, vocab.eos_id, vocab.boq_id, vocab.eoq_id) == (0, 1, 2, 3, 13, 14)
    assert vocab.gene_ids.tolist() == [4, 5, 6]
    assert vocab.numeric_ids.tolist() == [7, 8, 9, 10, 11, 12]
    assert vocab.numeric_values[vocab.numeric_ids].tolist() == [-3, -2, -1, 0, 1, 2]
    assert vocab.time_range == (-3, 2)
    assert vocab.time_token(-1) == 9
    assert vocab.token_dtype == np.uint16
    with pytest.raises(MaxtokiError, match="covers -3..2"):
        vocab.time_token(3)


def test_released_size_layout():
    """20,271 genes and T=1500 give the released 23,277 tokens with <boq>=23275, <eoq>=23276."""
    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(20271)], max_time=1500)
    assert len(vocab) == 23277
    assert (vocab.boq_id, vocab.eoq_id) == (23275, 23276)
    assert vocab.token(20275) == "-1500" and vocab.token(23274) == "1499"
    assert int(vocab.is_gene.sum()) == 20271 and int(vocab.is_numeric.sum()) == 3000


def test_json_dictionary_loads_unchanged(tmp_path):
    released = {"<pad>": 0, "<mask>": 1, "<bos>": 2, "<eos>": 3, "ENSG00000000003": 4, "ENSG00000000005": 5,
                "-1": 6, "0": 7, "<boq>": 8, "<eoq>": 9}
    path = tmp_path / "token_dictionary.json"
    path.write_text(json.dumps(released))
    vocab = Vocabulary.load(path)
    assert dict(vocab.token_to_id) == released
    vocab.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == released
    assert Vocabulary.load(tmp_path / "again.json").sha256 == vocab.sha256


def test_geneformer_pickle_loads_unchanged(tmp_path):
    geneformer = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, "ENSG00000000003": 4, "ENSG00000000005": 5}
    path = tmp_path / "token_dictionary_gc104M.pkl"
    path.write_bytes(pickle.dumps(geneformer))
    vocab = Vocabulary.load(path)
    assert dict(vocab.token_to_id) == geneformer
    assert vocab.bos_id == 2 and vocab.eos_id == 3
    assert vocab.genes == ["ENSG00000000003", "ENSG00000000005"]
    assert not vocab.is_numeric.any()


def test_pickle_that_imports_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"<pad>": Evil()}))
    with pytest.raises(MaxtokiError, match="not a token dictionary pickle"):
        Vocabulary.load(path)


def test_bad_vocabularies(tmp_path):
    (tmp_path / "dup.json").write_text(json.dumps({"<pad>": 0, "A": 0}))
    with pytest.raises(MaxtokiError, match="same id"):
        Vocabulary.load(tmp_path / "dup.json")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(MaxtokiError, match="text.json"):
        Vocabulary.load(tmp_path / "text.json")
