"""Sequence packing: exact rows, the same loss and logits as the cells alone, and full batches on PBMC 3k."""

import numpy as np
import pytest
import torch

from maxtoki.data.loaders import PadCollator
from maxtoki.data.packing import PackingCollator, first_fit_decreasing, packed_batch, real_token_share
from maxtoki.model.packed_attention import attention_inputs
from maxtoki.vocab import Vocabulary


def test_first_fit_decreasing_and_the_packed_tensors():
    lengths = [5, 3, 4, 2, 6]
    assert first_fit_decreasing(lengths, range(5), 8) == [[4, 3], [0, 1], [2]]
    cells = [np.array([2, 10, 3]), np.array([2, 11, 12, 3]), np.array([2, 3])]
    batch = packed_batch(cells, [[1, 2], [0]], pad_id=0)
    assert batch["input_ids"].tolist() == [[2, 11, 12, 3, 2, 3], [2, 10, 3, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    assert batch["sequence_id"].tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, -1, -1, -1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]


def test_the_collator_sends_full_rows_and_carries_the_rest_over():
    collate = PackingCollator(rows=2, row_length=10, pad_id=0)
    first = collate([{"input_ids": np.full(n, 5)} for n in (6, 4, 5, 5, 3)])  # 23 tokens: 2 full rows + 3
    assert first["attention_mask"].sum(dim=1).tolist() == [10, 10]
    second = collate([{"input_ids": np.full(n, 5)} for n in (7,)])  # the leftover 3 joins it
    assert second["attention_mask"].sum().item() == 10 and second["input_ids"].shape[0] == 1
    assert collate.cells_in == 6 and collate.cells_dropped == 0


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaForCausalLM

    from maxtoki.model.composer_model import MaxTokiModel
    from maxtoki.model.sizes import llama_config

    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(1, 41)], max_time=5)
    torch.manual_seed(0)
    backbone = LlamaForCausalLM(llama_config("tiny", len(vocab), max_position_embeddings=64)).eval()
    return MaxTokiModel(backbone, vocab, "pretrain"), vocab


def random_cells(vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [np.array([vocab.bos_id, *rng.choice(vocab.gene_ids, n - 2, replace=False), vocab.eos_id])
            for n in lengths]


def test_packed_rows_give_the_loss_and_logits_of_the_cells_alone(tiny_model):
    model, vocab = tiny_model
    cells = random_cells(vocab, [12, 30, 7, 21, 16, 9])
    padded = PadCollator(vocab.pad_id)([{"input_ids": c} for c in cells])
    rows = first_fit_decreasing([len(c) for c in cells], range(len(cells)), 40)
    assert len(rows) == 3  # 95 tokens in rows of 40
    packed = packed_batch(cells, rows, vocab.pad_id)
    with torch.no_grad():
        alone = model.model(input_ids=padded["input_ids"], **attention_inputs(model.model, padded)).logits
        together = model.model(input_ids=packed["input_ids"], **attention_inputs(model.model, packed)).logits
        loss_alone = model.loss(model(padded), padded)
        loss_packed = model.loss(model(packed), packed)
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            n = len(cells[index])
            torch.testing.assert_close(together[r, start:start + n], alone[index, :n], atol=1e-5, rtol=1e-5)
            start += n
    assert loss_packed.item() == pytest.approx(loss_alone.item(), abs=1e-6)
    # the same tokens are scored: every gene and <eos> after the first token of each cell
    assert len(model(packed).labels) == len(model(padded).labels) == sum(len(c) - 1 for c in cells)
    # FLOPs count real tokens and attention within each cell, packed or not
    assert model.flops_per_batch(packed) == model.flops_per_batch(padded)


@pytest.fixture(scope="module")
def pbmc_cells(tmp_path_factory, pbmc_path):
    from maxtoki.cli import main

    root = tmp_path_factory.mktemp("pbmc_packing")
    for argv in (["data", "medians", pbmc_path, "--out", root / "medians.json", "--gene-id-column", "ensembl_id"],
                 ["data", "vocab", "--medians", root / "medians.json", "--out", root / "vocab.json"],
                 ["data", "tokenize", pbmc_path, "--vocab", root / "vocab.json", "--medians", root / "medians.json",
                  "--gene-id-column", "ensembl_id", "--out", root / "cells", "--model-input-size", 4096]):
        assert main([str(a) for a in argv]) == 0
    return root


def test_packed_batches_are_at_least_95_percent_real_tokens_on_pbmc3k(pbmc_cells):
    from maxtoki.data.loaders import build_cells_loader

    dataset = {"remote": str(pbmc_cells / "cells"), "vocab": str(pbmc_cells / "vocab.json"), "max_seq_len": 4096,
               "shuffle": True, "shuffle_seed": 1}
    padded_share, padded_cells = real_token_share(build_cells_loader(dataset=dataset, device_batch_size=8).dataloader)
    spec = build_cells_loader(dataset={**dataset, "packing_ratio": "auto"}, device_batch_size=8)
    packed_share, packed_cells = real_token_share(spec.dataloader)
    assert padded_share < 0.7  # the padding that packing removes
    assert packed_share >= 0.95
    collate = spec.dataloader.collate_fn
    assert collate.cells_dropped == 0
    # every cell read is sent once, except those still waiting in the rows left at the end of the epoch
    assert packed_cells + sum(len(row) for row in collate._leftover) == collate.cells_in
    assert packed_cells >= 0.97 * padded_cells


def test_a_loader_whose_shared_memory_prefix_another_run_takes_meanwhile_takes_the_next(pbmc_cells, monkeypatch):
    """Streaming finds a free shared-memory prefix, then creates it: another run starting at the same moment can
    take it in between (FileExistsError). The loader's dataset is made again and registers under the next one."""
    from multiprocessing.shared_memory import SharedMemory

    import streaming.base.shared.prefix as prefix
    from streaming.base.constant import LOCALS

    from maxtoki.data.loaders import build_cells_loader

    find, taken = prefix._check_and_find_retrying, []

    def find_and_lose_the_race(streams_local, streams_remote, shm_name, retry):
        found = find(streams_local, streams_remote, shm_name=shm_name, retry=retry)
        if not taken:  # the other run registers its own data under the prefix just found
            other = prefix._pack_locals(["/another/run"], found)
            taken.append((found, SharedMemory(prefix._get_path(found, LOCALS), create=True, size=len(other))))
            taken[0][1].buf[:len(other)] = other
        return found

    monkeypatch.setattr(prefix, "_check_and_find_retrying", find_and_lose_the_race)
    try:
        dataset = {"remote": str(pbmc_cells / "cells"), "vocab": str(pbmc_cells / "vocab.json"), "max_seq_len": 4096}
        loader = build_cells_loader(dataset=dataset, device_batch_size=8).dataloader
        assert taken and loader.dataset._shm_prefix_int != taken[0][0]
        assert next(iter(loader))["input_ids"].shape[0] == 8
    finally:
        for _, memory in taken:
            memory.close()
            memory.unlink()


def test_packing_ratio_is_checked(pbmc_cells):
    from maxtoki.data.loaders import build_cells_loader
    from maxtoki.errors import MaxtokiError

    dataset = {"remote": str(pbmc_cells / "cells"), "vocab": str(pbmc_cells / "vocab.json"), "max_seq_len": 4096}
    with pytest.raises(MaxtokiError, match="packing_ratio 'often': give auto or a number of cells per row"):
        build_cells_loader(dataset={**dataset, "packing_ratio": "often"}, device_batch_size=8)


def test_embeddings_of_packed_rows_equal_those_of_each_cell_alone(tiny_model):
    from maxtoki.inference.embed import embed_tokens

    model, vocab = tiny_model
    cells = random_cells(vocab, [12, 30, 7, 21, 16, 9, 40, 3], seed=1)
    alone = np.stack([embed_tokens(model.model, [cell], vocab)[0] for cell in cells])
    np.testing.assert_allclose(embed_tokens(model.model, cells, vocab, batch_size=2, pack=True), alone, atol=1e-5)
    np.testing.assert_allclose(embed_tokens(model.model, cells, vocab, batch_size=3, pack=False), alone, atol=1e-5)
