"""Files -> MDS shards: round trip through StreamingDataset, manifest accounting, parallel output, 10x."""

import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest

from maxtoki.cli import main
from maxtoki.data import ReadOptions, TokenizeOptions, tokenize_anndata, tokenize_files
from maxtoki.data.cells import tokenize as tokenize_module
from maxtoki.data.shards.mds import streaming_dataset_class


def read_shards(path, local=None):
    StreamingDataset = streaming_dataset_class()
    if local is None:
        dataset = StreamingDataset(local=str(path), shuffle=False, batch_size=1)
    else:
        dataset = StreamingDataset(remote=str(path), local=str(local), shuffle=False, batch_size=1)
    return [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def hsmm_shards(tmp_path_factory, hsmm_path, hsmm_reference):
    vocab, medians = hsmm_reference
    out = tmp_path_factory.mktemp("hsmm") / "cells"
    code = main(["data", "tokenize", str(hsmm_path), "--vocab", str(vocab), "--medians", str(medians),
                 "--out", str(out), "--allow-non-integer", "--time-column", "hours", "--keep-obs", "media",
                 "--group-columns", "media", "state"])
    assert code == 0
    return out


def test_round_trip_matches_in_memory_tokenization(hsmm_shards, hsmm_path, hsmm_reference):
    vocab, medians = hsmm_reference
    expected = tokenize_anndata(ad.read_h5ad(hsmm_path), vocab, medians, allow_non_integer=True,
                                time_column="hours", keep_obs=["media"], group_columns=["media", "state"])
    samples = read_shards(hsmm_shards)
    assert len(samples) == len(expected) == 271
    for sample, ids, (cell_id, row) in zip(samples, expected.input_ids, expected.obs.iterrows()):
        assert sample["input_ids"].dtype == np.uint16
        assert np.array_equal(sample["input_ids"], ids)
        assert sample["length"] == len(ids) == row["length"]
        assert sample["cell_id"] == cell_id
        assert sample["dataset"] == "hsmm_myoblast_timecourse"
        assert sample["time"] == row["time"]
        assert sample["media"] == row["media"]
        assert sample["group"] == row["group"]
    assert samples[0]["cell_id"] == "T0_CT_A01" and samples[0]["time"] == 0.0
    assert samples[0]["input_ids"][0] == 2 and samples[0]["input_ids"][-1] == 3
    assert max(len(s["input_ids"]) for s in samples) == 4096


def test_manifest_accounts_for_every_cell(hsmm_shards, hsmm_reference):
    manifest = json.loads((hsmm_shards / "manifest.json").read_text())
    cells = manifest["cells"]
    assert cells["read"] == 271
    assert cells["written"] + sum(cells["dropped"].values()) == cells["read"]
    assert manifest["vocabulary"]["sha256"] and manifest["medians"]["sha256"]
    assert manifest["columns"]["input_ids"] == "ndarray:uint16"
    assert manifest["arguments"]["time_column"] == "hours"
    assert manifest["inputs"][0]["cells"] == 271
    assert manifest["tokens"] == sum(len(s["input_ids"]) for s in read_shards(hsmm_shards))
    assert "mosaicml-streaming" in manifest["versions"]
    assert not list(hsmm_shards.parent.glob(".cells.partial-*"))


def test_parallel_parts_write_identical_shards(tmp_path, pbmc_path, monkeypatch):
    from maxtoki.data.cells.medians import compute_medians, write_medians
    from maxtoki.vocab import Vocabulary

    read = ReadOptions(gene_id_column="ensembl_id")
    medians, _ = compute_medians([pbmc_path], read=read)
    write_medians(medians, tmp_path / "medians.json")
    Vocabulary.build(medians).save(tmp_path / "vocab.json")
    monkeypatch.setattr(tokenize_module, "PART_CELLS", 1000)  # 3 parts
    options = TokenizeOptions(read=read, chunk_size=300)
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        manifest = tokenize_files([pbmc_path], tmp_path / "vocab.json", tmp_path / "medians.json", str(out),
                                  options=options, workers=workers)
        assert manifest["cells"]["written"] == 2700
        outputs.append(out)
    files = sorted(p.relative_to(outputs[0]) for p in outputs[0].rglob("*.mds"))
    assert [str(f) for f in files] == ["part-00000/shard.00000.mds", "part-00001/shard.00000.mds",
                                       "part-00002/shard.00000.mds"]
    for name in files:
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes()
    samples = read_shards(outputs[1])
    assert [s["cell_id"] for s in samples] == list(ad.read_h5ad(pbmc_path, backed="r").obs_names)


def write_10x_h5(adata, path: Path) -> None:
    """Cell Ranger v3 layout: a genes x cells CSC matrix, i.e. the cells x genes CSR arrays."""
    matrix = adata.X.tocsr()
    with h5py.File(path, "w") as f:
        group = f.create_group("matrix")
        group["data"] = matrix.data.astype(np.int32)
        group["indices"] = matrix.indices.astype(np.int64)
        group["indptr"] = matrix.indptr.astype(np.int64)
        group["shape"] = np.array([adata.n_vars, adata.n_obs], dtype=np.int32)
        group["barcodes"] = np.array(adata.obs_names, dtype="S")
        features = group.create_group("features")
        features["id"] = np.array(adata.var["ensembl_id"], dtype="S")
        features["name"] = np.array(adata.var_names, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * adata.n_vars, dtype="S")


def test_10x_h5_input_equals_h5ad_input(tmp_path, pbmc_path, hsmm_reference):
    vocab, medians = hsmm_reference
    adata = ad.read_h5ad(pbmc_path)[:400].copy()
    write_10x_h5(adata, tmp_path / "pbmc.h5")
    tenx = tokenize_files([tmp_path / "pbmc.h5"], vocab, medians, str(tmp_path / "tenx"))
    reference = tokenize_anndata(adata, vocab, medians, gene_id_column="ensembl_id")
    samples = read_shards(tmp_path / "tenx")
    assert tenx["cells"]["written"] == len(reference) > 390
    assert [s["cell_id"] for s in samples] == reference.obs.index.tolist()
    for sample, ids in zip(samples, reference.input_ids):
        assert np.array_equal(sample["input_ids"], ids)


def test_directory_input_and_config_file(tmp_path, tiny_files):
    vocab, medians, write = tiny_files
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "nested").mkdir()
    write("inputs/b.h5ad", [[1, 0, 0, 0, 0]])
    write("inputs/nested/a.h5ad", [[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    config = tmp_path / "recipe.yaml"
    config.write_text(f"inputs: [{folder}]\nvocab: {vocab}\nmedians: {medians}\nmodel_input_size: 8\n")
    out = tmp_path / "cells"
    assert main(["data", "tokenize", "--config", str(config), "--out", str(out)]) == 0
    samples = read_shards(out)
    assert [(s["dataset"], s["input_ids"].tolist()) for s in samples] == [("b", [2, 4, 3]), ("a", [2, 5, 3])]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cells"] == {"read": 3, "written": 2, "dropped": {"zero_counts": 1}}
    assert manifest["arguments"]["model_input_size"] == 8


@pytest.mark.parametrize("layout", ["dense_X", "layer", "raw"])
def test_h5ad_layouts_read_from_disk_like_in_memory(tmp_path, tiny_files, layout):
    from conftest import make_adata

    vocab, medians, _ = tiny_files
    counts = np.array([[3, 0, 1, 0, 2], [0, 4, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=np.float32)
    adata = make_adata(np.zeros_like(counts) + 0.5, obs={"age": [1.0, np.nan, 3.0], "donor": ["a", "b", "a"]})
    adata.obs["donor"] = adata.obs["donor"].astype("category")
    flag = []
    if layout == "dense_X":
        adata.X = counts
    elif layout == "layer":
        adata.layers["counts"] = counts
        flag = ["--layer", "counts"]
    else:
        adata.raw = make_adata(counts)
        flag = ["--use-raw"]
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "out"
    assert main(["data", "tokenize", str(path), "--vocab", str(vocab), "--medians", str(medians), "--out", str(out),
                 "--time-column", "age", "--group-columns", "donor"] + flag) == 0
    samples = read_shards(out)
    # G4 (median 0.5) leads the third cell, then the tie G1/G3/G5 by id, then G2 (median 2);
    # the second cell has no time: dropped and counted
    assert [s["input_ids"].tolist() for s in samples] == [[2, 4, 8, 6, 3], [2, 7, 4, 6, 8, 5, 3]]
    assert [(s["time"], s["group"]) for s in samples] == [(1.0, "a"), (3.0, "a")]
    assert json.loads((out / "manifest.json").read_text())["cells"]["dropped"] == {"missing_time": 1}


def test_column_major_matrix_is_refused_with_advice(capsys, tmp_path, tiny_files):
    import scipy.sparse as sp
    from conftest import make_adata

    vocab, medians, _ = tiny_files
    adata = make_adata([[1, 0, 0, 0, 0]])
    adata.X = sp.csc_matrix(adata.X)
    adata.write_h5ad(tmp_path / "csc.h5ad")
    assert main(["data", "tokenize", str(tmp_path / "csc.h5ad"), "--vocab", str(vocab), "--medians", str(medians),
                 "--out", str(tmp_path / "out")]) == 2
    assert "column-major (CSC)" in capsys.readouterr().err
