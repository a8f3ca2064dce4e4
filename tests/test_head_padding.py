"""Heads of 154 (the released 217M's) zero-padded to 160 so fused attention runs them: the padded model computes
what the unpadded one does, training keeps the padding zero, and a checkpoint of a padded run loads unpadded."""

import copy

import pytest
import torch
from helpers.released import released_config, write_release

from maxtoki.cli import main as cli_main
from maxtoki.model.head_padding import PADDED, pad_heads, unpad_heads

LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def cli(*argv):
    return cli_main([str(a) for a in argv])


def model_of_154(kv_heads: int, rope_scaling=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=300, hidden_size=308, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=kv_heads, max_position_embeddings=256,
                         rope_scaling=rope_scaling, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kv_heads, rope_scaling", [(2, None), (1, LLAMA3)])
def test_padded_heads_compute_what_the_unpadded_ones_do(kv_heads, rope_scaling):
    model = model_of_154(kv_heads, rope_scaling)
    padded = copy.deepcopy(model)
    pad_heads(padded)
    assert padded.config.head_dim == 160 and getattr(padded.config, PADDED) == 154
    assert padded.model.layers[0].self_attn.q_proj.weight.shape == (320, 308)
    ids = torch.randint(4, 300, (2, 200), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(input_ids=ids).logits, padded(input_ids=ids).logits
    assert (got - expected).abs().max() < 1e-5
    padded.train()
    padded(input_ids=ids, labels=ids).loss.backward()
    attention = padded.model.layers[0].self_attn
    for name, heads in (("q_proj", 2), ("k_proj", kv_heads), ("v_proj", kv_heads)):
        grad = getattr(attention, name).weight.grad.view(heads, 2, 80, -1)
        assert grad[:, :, 77:].abs().max() == 0 and grad[:, :, :77].abs().max() > 0, name
    assert attention.o_proj.weight.grad.view(308, 2, 2, 80)[..., 77:].abs().max() == 0
    unpad_heads(padded)
    assert padded.config.head_dim == 154 and not hasattr(padded.config, PADDED)
    assert torch.equal(padded.model.layers[1].self_attn.o_proj.weight, model.model.layers[1].self_attn.o_proj.weight)
    with torch.no_grad():
        assert (padded.eval()(input_ids=ids).logits - expected).abs().max() < 1e-5


def test_a_meta_built_padded_model_starts_with_zero_padding(tmp_path):
    from maxtoki.model.head_padding import apply_unpadded_rotary
    from maxtoki.model.meta_init import attach_param_init_fn, build_on, materialize

    config = copy.deepcopy(model_of_154(2).config)
    config.head_dim = 160
    setattr(config, PADDED, 154)
    model = build_on("meta", config)
    apply_unpadded_rotary(model)
    attach_param_init_fn(model)
    materialize(model)
    attention = model.model.layers[1].self_attn
    assert attention.q_proj.weight.view(2, 2, 80, -1)[:, :, 77:].abs().max() == 0
    assert attention.o_proj.weight.view(308, 2, 2, 80)[..., 77:].abs().max() == 0
    assert attention.q_proj.weight.view(2, 2, 80, -1)[:, :, :77].abs().max() > 0
    assert attention.scaling == pytest.approx(154 ** -0.5)


def test_stage2_with_padded_heads_from_an_imported_release(tmp_path, hsmm_path):
    """Stage 2 by recipe on a 154-head release with model.pad_heads=true (what the 217m recipe does on GPU): the
    training model computes what the imported one does, and its checkpoint loads unpadded with the same logits."""
    from omegaconf import OmegaConf

    from maxtoki.inference.loading import load_model
    from maxtoki.training import train_from_recipe

    release = write_release(tmp_path / "release", released_config(hidden=308, layers=2, heads=2, intermediate=128))
    assert cli("import-hf", release, "--out", tmp_path / "imported") == 0
    assert cli("data", "released", "--out", tmp_path / "released") == 0
    assert cli("data", "tokenize", hsmm_path, "--vocab", tmp_path / "released" / "vocab.json", "--medians",
               tmp_path / "released" / "medians.json", "--out", tmp_path / "cells", "--allow-non-integer",
               "--min-expression", 0.1, "--time-column", "hours", "--model-input-size", 32) == 0
    assert cli("data", "paragraphs", tmp_path / "cells", "--out", tmp_path / "train", "--num-examples", 16,
               "--max-seq-len", 80, "--min-timepoints", 2, "--max-timepoints", 2) == 0
    recipe = OmegaConf.load("configs/temporal/tiny-cpu.yaml")
    recipe.callbacks = {}
    OmegaConf.save(recipe, tmp_path / "recipe.yaml")
    imported, _ = load_model(tmp_path / "imported")
    ids = torch.tensor([[2, 100, 5_000, 17, 3, 21_800, 23_275, 2, 64, 3, 23_276]])
    trainer = train_from_recipe(str(tmp_path / "recipe.yaml"), [
        f"model.pretrained={tmp_path / 'imported'}", "model.size=null", "model.pad_heads=true",
        f"variables.vocab={tmp_path / 'imported' / 'vocab.json'}", f"variables.data={tmp_path / 'train'}",
        "max_seq_len=80", "model.rope_scaling=null", "optimizer.lr=0.0", "max_duration=2ba", "eval_interval=2ba",
        "save_interval=2ba", "eval_subset_num_batches=1", f"save_folder={tmp_path / 'run'}"])
    padded = trainer.state.model.model.eval()
    assert padded.config.head_dim == 160 and padded.model.layers[0].self_attn.q_proj.weight.shape == (320, 308)
    with torch.no_grad():
        expected = imported(input_ids=ids).logits
        assert (padded(input_ids=ids).logits - expected).abs().max() < 1e-5
    loaded, _ = load_model(tmp_path / "run" / "latest-rank0.pt", tmp_path / "imported" / "vocab.json")
    assert loaded.config.head_dim == 154 and loaded.model.layers[0].self_attn.q_proj.weight.shape == (308, 308)
    with torch.no_grad():
        assert (loaded(input_ids=ids).logits - expected).abs().max() < 1e-5
