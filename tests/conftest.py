"""Shared fixtures: tiny hand-made inputs with known answers, the bundled examples, an S3 server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers.ports import start_moto

from maxtoki.datasets import example_path
from maxtoki.vocab import Vocabulary

os.environ.setdefault("WANDB_MODE", "offline")

GENES = [f"ENSG{i:011d}" for i in range(1, 6)]  # token ids 4..8 in a built vocabulary
COLLECTED = pytest.StashKey[dict]()  # test id relative to tests/ -> whether it is marked slow


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keeps every collected test, before `-m` deselects the slow ones, for tests/test_suite.py."""
    config.stash[COLLECTED] = {item.nodeid.removeprefix("tests/"): item.get_closest_marker("slow") is not None
                               for item in items}


@pytest.fixture(scope="session", autouse=True)
def notices_shown_as_the_cli_shows_them():
    """The library's notices (``logging``) printed as the command line prints them, whether a test calls the
    command line or the library, so tests read them from capsys."""
    from maxtoki.console import show_notices

    show_notices()


@pytest.fixture
def tiny_vocab() -> Vocabulary:
    return Vocabulary.build(GENES, max_time=10)


@pytest.fixture
def tiny_medians() -> dict[str, float]:
    return {GENES[0]: 1.0, GENES[1]: 2.0, GENES[2]: 1.0, GENES[3]: 0.5, GENES[4]: 1.0}


def make_adata(counts, var_names=None, obs=None, obs_names=None) -> ad.AnnData:
    counts = np.asarray(counts, dtype=np.float32)
    var_names = list(var_names) if var_names is not None else GENES[:counts.shape[1]]
    obs_names = list(obs_names) if obs_names is not None else [f"cell{i}" for i in range(counts.shape[0])]
    return ad.AnnData(X=sp.csr_matrix(counts), obs=pd.DataFrame(obs or {}, index=obs_names),
                      var=pd.DataFrame(index=var_names))


@pytest.fixture
def tiny_files(tmp_path, tiny_vocab, tiny_medians):
    """A vocabulary and medians file on disk, plus a writer for small h5ad inputs."""
    vocab_path = tmp_path / "vocab.json"
    tiny_vocab.save(vocab_path)
    medians_path = tmp_path / "medians.json"
    medians_path.write_text(json.dumps(tiny_medians))

    def write(name, counts, **kwargs):
        path = tmp_path / name
        make_adata(counts, **kwargs).write_h5ad(path)
        return path

    return vocab_path, medians_path, write


def tokenize_hsmm(hsmm: Path, vocab, medians, out, tokens: int) -> None:
    """The bundled HSMM time course as cells of at most ``tokens`` tokens, with times in hours."""
    from maxtoki.cli import main

    assert main([str(a) for a in ("data", "tokenize", hsmm, "--vocab", vocab, "--medians", medians, "--out", out,
                                  "--allow-non-integer", "--min-expression", "0.1", "--time-column", "hours",
                                  "--model-input-size", tokens)]) == 0


@pytest.fixture(scope="session")
def hsmm_path() -> Path:
    return example_path("hsmm")


@pytest.fixture(scope="session")
def pbmc_path() -> Path:
    return example_path("pbmc3k")


@pytest.fixture(scope="session")
def hsmm_reference(tmp_path_factory, hsmm_path):
    """Medians and vocabulary of the HSMM example, computed once per session."""
    from maxtoki.data.cells.medians import compute_medians, write_medians

    root = tmp_path_factory.mktemp("hsmm_reference")
    medians, _ = compute_medians([hsmm_path], allow_non_integer=True)
    write_medians(medians, root / "medians.json")
    Vocabulary.build(medians).save(root / "vocab.json")
    return root / "vocab.json", root / "medians.json"


@pytest.fixture(scope="session")
def hsmm_compact(tmp_path_factory, hsmm_path, hsmm_reference):
    """The HSMM medians with a vocabulary of only the genes among some cell's 62 top-ranked ones (the
    pipeline's second encoding does the same): 64-token cells encode exactly as with the whole vocabulary,
    while the output layer and every checkpoint shrink about tenfold (time tokens up to ±100: HSMM's Δ
    reach 72 h). For tests whose subject is not the vocabulary (S3 runs, several processes)."""
    from maxtoki.pipeline import genes_in_cells

    vocab, medians = hsmm_reference
    root = tmp_path_factory.mktemp("hsmm_compact")
    tokenize_hsmm(hsmm_path, vocab, medians, root / "cells", 64)
    Vocabulary.build(genes_in_cells(root / "cells"), max_time=100).save(root / "vocab.json")
    return root / "vocab.json", medians


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) in its own process on 127.0.0.1, with a bucket."""
    process, port = start_moto()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "S3_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="maxtoki-test")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
