"""Model sizes, losses and collation: exact numbers on small tensors."""

import math

import numpy as np
import pytest
import torch

from maxtoki.data.loaders import PadCollator
from maxtoki.model.losses import IGNORE, gather_scored, next_token_labels, response_labels, scored_labels, temporal_loss
from maxtoki.model.sizes import count_parameters, llama_config
from maxtoki.vocab import Vocabulary


@pytest.mark.parametrize("size, total, non_embedding, head_dim", [
    ("217m", 224_390_320, 166_988_976, 154),
    ("217m-flash", 224_390_320, 166_988_976, 112),
    ("1b", 1_062_957_312, 955_609_344, 144),
])
def test_published_sizes(size, total, non_embedding, head_dim):
    config = llama_config(size, 23277)  # the released vocabulary
    assert config.vocab_size == 23296 and not config.tie_word_embeddings
    assert config.head_dim == head_dim
    assert count_parameters(config) == {"total": total, "non_embedding": non_embedding}


def test_1b_and_217m_shapes():
    big, small = llama_config("1b", 23277), llama_config("217m", 23277)
    assert (big.num_hidden_layers, big.hidden_size, big.intermediate_size, big.num_attention_heads,
            big.num_key_value_heads, big.rms_norm_eps, big.rope_theta) == (20, 2304, 4608, 16, 8, 1e-5, 500_000.0)
    assert (small.num_hidden_layers, small.hidden_size, small.intermediate_size, small.num_attention_heads,
            small.num_key_value_heads, small.rms_norm_eps, small.rope_theta) == (11, 1232, 2464, 8, 8, 1e-6, 10_000.0)


def test_next_token_and_response_labels():
    ids = torch.tensor([[2, 10, 11, 3, 0], [2, 12, 3, 0, 0]])
    mask = (ids != 0).long()
    assert next_token_labels(ids, mask).tolist() == [[10, 11, 3, IGNORE, IGNORE], [12, 3, IGNORE, IGNORE, IGNORE]]
    prompt_length = torch.tensor([2, 1])
    assert response_labels(ids, mask, prompt_length).tolist() == [[IGNORE, 11, 3, IGNORE, IGNORE],
                                                                  [12, 3, IGNORE, IGNORE, IGNORE]]


@pytest.fixture
def vocab():
    return Vocabulary.build([f"ENSG{i:011d}" for i in range(1, 6)], max_time=10)  # numeric values -10..9


def stage2_loss(logits, batch, **settings):
    labels, readout = scored_labels(batch, "temporal")
    return temporal_loss(gather_scored(logits, labels, readout), batch["timelapse"], **settings)


def numeric(vocab):
    ids = torch.as_tensor(vocab.numeric_ids)
    return ids, torch.as_tensor(vocab.numeric_values[vocab.numeric_ids], dtype=torch.float32)


def test_time_between_cells_numeric_readout_loss(vocab):
    ids, values = numeric(vocab)
    logits = torch.full((1, 4, len(vocab)), -1e4)
    logits[0, 2, ids] = 0.0  # uniform over the numeric tokens at <eoq> (position prompt_length - 1 = 2)
    batch = dict(input_ids=torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 4, dtype=torch.long),
                 prompt_length=torch.tensor([3]), task=torch.tensor([1]), timelapse=torch.tensor([3]))
    parts = stage2_loss(logits, batch, numeric_ids=ids, numeric_values=values, label_scalar=200.0,
                        additive_penalty=10.0)
    expected_value = -0.5  # mean of -10..9
    assert parts["time_between_cells"].item() == pytest.approx(((expected_value - 3) / 200) ** 2, rel=1e-5)
    # half of the mass on a non-numeric token: the penalty counts, scaled by additive_penalty
    logits[0, 2, 5] = math.log(len(ids))
    for scalar, penalty in ((200.0, 10.0), (50.0, 2.0)):
        parts = stage2_loss(logits, batch, numeric_ids=ids, numeric_values=values, label_scalar=scalar,
                            additive_penalty=penalty)
        assert parts["time_between_cells"].item() == pytest.approx(((expected_value - 3) / scalar) ** 2 + penalty * 0.5,
                                                                   rel=1e-5)


def test_next_cell_loss_scores_only_the_response(vocab):
    ids, values = numeric(vocab)
    tokens = torch.tensor([[2, 4, 3, vocab.boq_id, vocab.time_token(2), vocab.eoq_id, 2, 5, 3]])
    logits = torch.zeros(1, tokens.shape[1], len(vocab))
    logits[0, torch.arange(5, 8), tokens[0, 6:9]] = 50.0  # perfect predictions of the response tokens only
    batch = dict(input_ids=tokens, attention_mask=torch.ones_like(tokens), prompt_length=torch.tensor([6]),
                 task=torch.tensor([0]), timelapse=torch.tensor([2]))
    parts = stage2_loss(logits, batch, numeric_ids=ids, numeric_values=values, label_scalar=200.0,
                        additive_penalty=10.0)
    assert parts["next_cell"].item() < 1e-6 and parts["time_between_cells"].item() == 0  # no such example
    assert parts["total"].item() == parts["next_cell"].item()


def test_mixed_batch_is_an_even_mix_and_cross_entropy_mode(vocab):
    ids, values = numeric(vocab)
    delta = vocab.time_token(2)
    tokens = torch.tensor([[2, 4, 3, vocab.boq_id, 2, 5, 3, vocab.eoq_id, delta],
                           [2, 4, 3, vocab.boq_id, delta, vocab.eoq_id, 2, 5, 3]])
    logits = torch.randn(2, 9, len(vocab), generator=torch.Generator().manual_seed(0))
    batch = dict(input_ids=tokens, attention_mask=torch.ones_like(tokens), prompt_length=torch.tensor([8, 6]),
                 task=torch.tensor([1, 0]), timelapse=torch.tensor([2, 2]))
    parts = stage2_loss(logits, batch, numeric_ids=ids, numeric_values=values, label_scalar=200.0,
                        additive_penalty=10.0)
    assert parts["total"].item() == pytest.approx((parts["next_cell"] + parts["time_between_cells"]).item() / 2)
    ce = stage2_loss(logits, batch, numeric_ids=ids, numeric_values=values, label_scalar=200.0,
                     additive_penalty=10.0, timelapse_loss="cross_entropy")
    expected = torch.nn.functional.cross_entropy(logits[0, 7][None], torch.tensor([delta]))
    assert ce["time_between_cells"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("objective", ["pretrain", "temporal"])
def test_the_output_layer_runs_only_on_scored_positions(vocab, objective):
    from transformers import LlamaForCausalLM

    from maxtoki.model.composer_model import MaxTokiModel
    from maxtoki.model.sizes import llama_config

    torch.manual_seed(0)
    backbone = LlamaForCausalLM(llama_config("tiny", len(vocab), max_position_embeddings=16)).eval()
    model = MaxTokiModel(backbone, vocab, objective)
    delta = vocab.time_token(2)
    tokens = torch.tensor([[2, 4, 3, vocab.boq_id, 2, 5, 3, vocab.eoq_id, delta],
                           [2, 4, 3, vocab.boq_id, delta, vocab.eoq_id, 2, 5, 0]])
    batch = dict(input_ids=tokens, attention_mask=(tokens != 0).long(), prompt_length=torch.tensor([8, 6]),
                 task=torch.tensor([1, 0]), timelapse=torch.tensor([2, 2]))
    with torch.no_grad():
        scored = model(batch)
        full = backbone(input_ids=tokens, attention_mask=batch["attention_mask"]).logits
    expected = gather_scored(full, *scored_labels(batch, objective))
    # where a cell is predicted, only <bos>, genes and <eos> can come next
    cell_tokens = torch.as_tensor([vocab.bos_id, *vocab.gene_ids, vocab.eos_id])
    in_cell = ~expected.readout
    assert (scored.logits[in_cell][:, cell_tokens] > -1e30).all()
    not_cell = torch.ones(scored.logits.shape[-1], dtype=torch.bool)
    not_cell[cell_tokens] = False
    assert (scored.logits[in_cell][:, not_cell] == torch.finfo(torch.float32).min).all()
    expected.logits[in_cell] = expected.logits[in_cell].masked_fill(not_cell, torch.finfo(torch.float32).min)
    full[:, :, not_cell] = torch.where(expected_in_cell_positions(batch, objective)[..., None],
                                       torch.finfo(torch.float32).min, full[:, :, not_cell])
    if objective == "pretrain":  # every real token but the last of each row
        assert scored.rows.tolist() == [0] * 8 + [1] * 7
    else:  # the <eoq> of row 0, the response of row 1 (<eoq> -> <bos>, <bos> -> 5, 5 -> ... cut by padding)
        assert scored.rows.tolist() == [0, 1, 1] and scored.readout.tolist() == [True, False, False]
        assert scored.labels.tolist() == [delta, 2, 5]
    torch.testing.assert_close(scored.logits, expected.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(scored.labels, expected.labels) and torch.equal(scored.readout, expected.readout)
    with torch.no_grad():
        loss = model.loss(scored, batch)
    if objective == "pretrain":
        labels = next_token_labels(tokens, batch["attention_mask"])
        reference = torch.nn.functional.cross_entropy(full.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    else:
        ids, values = numeric(vocab)
        reference = stage2_loss(full, batch, numeric_ids=ids, numeric_values=values, label_scalar=200.0,
                                additive_penalty=10.0)
        assert loss["total"].item() == pytest.approx(reference["total"].item(), rel=1e-5)


def expected_in_cell_positions(batch, objective):
    labels, readout = scored_labels(batch, objective)
    return (labels != IGNORE) & ~readout


def test_numeric_mass_penalty_moves_mass_without_reshaping_the_time_distribution(vocab):
    from maxtoki.model.losses import numeric_distribution, numeric_mass_penalty

    ids, values = numeric(vocab)
    logits = torch.randn(3, len(vocab), generator=torch.Generator().manual_seed(1), requires_grad=True)
    penalty = numeric_mass_penalty(logits, ids)
    plain = 1 - torch.softmax(logits, dim=-1)[:, ids].sum(dim=-1)
    torch.testing.assert_close(penalty, plain)  # the value is P(non-numeric)
    penalty.sum().backward()
    numeric_gradient = logits.grad[:, ids]
    # the same gradient on every time token: a step changes their total mass, not their distribution
    torch.testing.assert_close(numeric_gradient, numeric_gradient[:, :1].expand_as(numeric_gradient))
    assert (numeric_gradient < 0).all()
    with torch.no_grad():
        before = numeric_distribution(logits, ids, values)
        after = numeric_distribution(logits - 100.0 * logits.grad, ids, values)
    torch.testing.assert_close(before[0], after[0], rtol=1e-4, atol=1e-4)  # expected time
    torch.testing.assert_close(before[1], after[1], rtol=1e-4, atol=1e-4)  # spread
    assert (after[2] < before[2]).all()  # less mass off the time tokens


def test_spread_of_the_time_distribution(vocab):
    from maxtoki.model.losses import numeric_distribution

    ids, values = numeric(vocab)
    logits = torch.full((1, len(vocab)), -1e4)
    logits[0, vocab.time_token(2)] = logits[0, vocab.time_token(6)] = 0.0  # half at 2, half at 6
    expected, spread, off = numeric_distribution(logits, ids, values)
    assert expected.item() == pytest.approx(4.0) and spread.item() == pytest.approx(2.0) and off.item() < 1e-6


def test_stage1_leaves_the_time_tokens_untouched(vocab):
    """Stage 1 never sees time tokens: its loss gives their output rows no gradient, so stage 2 starts
    from an untrained, flat distribution over times rather than one trained only to be unlikely."""
    from transformers import LlamaForCausalLM

    from maxtoki.model.composer_model import MaxTokiModel
    from maxtoki.model.sizes import llama_config

    torch.manual_seed(0)
    model = MaxTokiModel(LlamaForCausalLM(llama_config("tiny", len(vocab), max_position_embeddings=16)), vocab)
    tokens = torch.tensor([[2, 4, 6, 5, 3], [2, 7, 4, 3, 0]])
    batch = dict(input_ids=tokens, attention_mask=(tokens != 0).long())
    model.loss(model(batch), batch).backward()
    rows = model.model.lm_head.weight.grad.abs().sum(dim=1)
    assert (rows[torch.as_tensor(vocab.numeric_ids)] == 0).all() and rows[[vocab.boq_id, vocab.eoq_id]].eq(0).all()
    assert (rows[torch.as_tensor(vocab.gene_ids)] > 0).all() and rows[vocab.eos_id] > 0


def test_pad_collator():
    batch = PadCollator(pad_id=0)([{"input_ids": np.array([2, 9, 3], dtype=np.uint16), "task": 1},
                                   {"input_ids": np.array([2, 3], dtype=np.uint16), "task": 0}])
    assert batch["input_ids"].tolist() == [[2, 9, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["task"].tolist() == [1, 0] and batch["input_ids"].dtype == torch.long


def test_stage2_model_starts_from_a_hugging_face_directory(tmp_path, vocab):
    from transformers import LlamaForCausalLM

    from maxtoki.model.composer_model import MaxTokiTemporalModel
    from maxtoki.model.sizes import llama_config

    vocab.save(tmp_path / "vocab.json")
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config("tiny", len(vocab))).save_pretrained(tmp_path / "hf")
    model = MaxTokiTemporalModel(size="tiny", vocab=str(tmp_path / "vocab.json"), pretrained=str(tmp_path / "hf"),
                                 max_seq_len=1024, rope_scaling={"rope_type": "llama3", "factor": 4.0,
                                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                                 "original_max_position_embeddings": 256})
    saved = LlamaForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    for name, value in model.model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    assert model.model.config.max_position_embeddings == 1024
    assert model.model.config.rope_scaling["factor"] == 4.0
    assert model.model.config.maxtoki["label_scalar"] == 200.0


def test_training_pearson_spans_a_window_of_batches(vocab):
    from maxtoki.model.losses import Scored
    from maxtoki.model.metrics import TimelapsePearson

    ids, values = numeric(vocab)
    model = type("M", (), {"numeric_ids": ids, "numeric_values": values})()
    metric = TimelapsePearson(window=4)
    for true in (2, 4, 6, -4, -2):  # one example per batch, predicted exactly
        logits = torch.full((1, len(vocab)), -1e4)
        logits[0, vocab.time_token(true)] = 0.0
        metric.reset()  # what Composer does before every training batch
        metric.update({"timelapse": torch.tensor([true])}, Scored(logits, torch.tensor([0]), torch.tensor([0]),
                                                                  torch.tensor([True])), model)
    assert metric.compute().item() == pytest.approx(1.0)
    assert dim_zero_len(metric) == 4 + 1  # the window of earlier examples and this batch, not all of them


def test_next_gene_metrics_without_next_gene_positions_are_not_a_number(vocab):
    """An evaluation of TimeBetweenCells prompts only scores no next gene: n/a, not a perfect cross-entropy of 0."""
    from maxtoki.model.losses import Scored
    from maxtoki.model.metrics import NextGeneAccuracy, NextGeneCrossEntropy, NextGenePerplexity
    from maxtoki.model.progress import eval_summary

    only_readout = Scored(torch.zeros((2, len(vocab))), torch.tensor([5, 6]), torch.tensor([0, 1]),
                          torch.tensor([True, True]))
    values = {}
    for metric in (NextGeneCrossEntropy(), NextGenePerplexity(), NextGeneAccuracy()):
        metric.update({}, only_readout, None)
        values[type(metric).__name__] = metric.compute().item()
    assert all(math.isnan(value) for value in values.values())
    assert eval_summary(values) == "next gene: cross-entropy n/a, accuracy n/a"
    scored = Scored(torch.zeros((2, len(vocab))), torch.tensor([5, 6]), torch.tensor([0, 1]),
                    torch.tensor([False, True]))
    metric = NextGeneCrossEntropy()
    metric.update({}, scored, None)
    assert metric.compute().item() == pytest.approx(math.log(len(vocab)))  # uniform logits, one position


def dim_zero_len(metric):
    from torchmetrics.utilities.data import dim_zero_cat

    return len(dim_zero_cat(metric.predicted))


def test_soft_time_target_is_a_gaussian_around_the_truth(vocab):
    from maxtoki.model.losses import soft_time_cross_entropy

    ids, values = numeric(vocab)
    target = torch.softmax(-0.5 * ((values - 2.0) / 1.5) ** 2, dim=0)
    logits = torch.full((1, len(vocab)), 3.0)  # mass off the time tokens does not enter this term
    logits[0, ids] = target.log()
    logits.requires_grad_(True)
    loss = soft_time_cross_entropy(logits, ids, values, torch.tensor([2]), 1.5)
    entropy = -(target * target.log()).sum()
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-5)  # the minimum: the distribution is the target
    loss.sum().backward()
    assert logits.grad.abs().max().item() < 1e-6
    # a distribution peaked two tokens away costs more than one peaked on the truth
    peaked = torch.full((2, len(vocab)), -1e4)
    peaked[0, vocab.time_token(2)] = peaked[1, vocab.time_token(4)] = 0.0
    on, off = soft_time_cross_entropy(peaked, ids, values, torch.tensor([2, 2]), 1.5)
    assert off.item() > on.item()


def test_time_smoothing_adds_the_soft_cross_entropy(vocab):
    from maxtoki.model.losses import soft_time_cross_entropy

    ids, values = numeric(vocab)
    logits = torch.randn(1, 4, len(vocab), generator=torch.Generator().manual_seed(3))
    batch = dict(input_ids=torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 4, dtype=torch.long),
                 prompt_length=torch.tensor([3]), task=torch.tensor([1]), timelapse=torch.tensor([-3]))
    settings = dict(numeric_ids=ids, numeric_values=values, label_scalar=5.0, additive_penalty=1.0)
    plain = stage2_loss(logits, batch, **settings)["time_between_cells"]
    smoothed = stage2_loss(logits, batch, **settings, time_smoothing=2.0)["time_between_cells"]
    extra = soft_time_cross_entropy(logits[:, 2], ids, values, torch.tensor([-3]), 2.0)
    assert smoothed.item() == pytest.approx(plain.item() + extra.item(), rel=1e-5)


def test_meta_initialisation_module_by_module_as_fsdp_does(tmp_path, vocab):
    """Composer's FSDP moves each module off ``meta`` with ``to_empty`` and calls the model's
    ``param_init_fn`` on it: every parameter must end initialised as Hugging Face would."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from maxtoki.model.composer_model import MaxTokiPretrainModel
    from maxtoki.model.meta_init import materialize

    vocab.save(tmp_path / "vocab.json")
    overrides = {"hidden_size": 256, "intermediate_size": 512}  # enough weights for a tight std estimate
    on_host = MaxTokiPretrainModel(size="tiny", vocab=str(tmp_path / "vocab.json"), config_overrides=overrides)
    model = MaxTokiPretrainModel(size="tiny", vocab=str(tmp_path / "vocab.json"), config_overrides=overrides,
                                 init_device="meta")
    backbone = model.model
    assert all(p.is_meta for p in backbone.parameters())
    assert callable(backbone.param_init_fn)
    torch.manual_seed(0)
    materialize(backbone)
    assert not any(p.is_meta for p in backbone.parameters()) and not any(b.is_meta for b in backbone.buffers())
    std = backbone.config.initializer_range
    for name, module in backbone.named_modules():
        if isinstance(module, LlamaRMSNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
        elif isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            weight = module.weight.detach()
            if isinstance(module, torch.nn.Embedding):
                assert torch.equal(weight[module.padding_idx], torch.zeros_like(weight[0]))
                weight = weight[torch.arange(len(weight)) != module.padding_idx]
            assert weight.std().item() == pytest.approx(std, rel=0.05), name  # >= 1,500 weights each
            assert abs(weight.mean().item()) < std / 10, name
    # the rotary frequencies are computed on the host, never left as uninitialised memory
    for (name, buffer), (_, expected) in zip(backbone.named_buffers(), on_host.model.named_buffers()):
        assert torch.equal(buffer, expected), name
    ids = torch.tensor([[vocab.bos_id, *vocab.gene_ids, vocab.eos_id]])
    assert torch.isfinite(backbone(input_ids=ids).logits).all()
