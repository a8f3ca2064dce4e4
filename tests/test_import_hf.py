"""import-hf: a randomly initialised model of exactly the released configuration (217M, 23,277-token
vocabulary, saved with save_pretrained) becomes a model that predict time, generate, embed and
stage-2 training accept."""

import json
import pickle
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from conftest import tokenize_hsmm

from maxtoki.cli import main as cli_main
from maxtoki.vocab import Vocabulary

ROOT = Path(__file__).resolve().parent.parent
RELEASED_GENES = 20_271


def cli(*argv):
    return cli_main([str(a) for a in argv])


@pytest.fixture(scope="module")
def released(tmp_path_factory, hsmm_path, hsmm_reference):
    """A released-layout token dictionary (pickle), a random 217M model beside it, and HSMM data made with it."""
    from transformers import LlamaForCausalLM

    from maxtoki.model.sizes import llama_config

    _, medians = hsmm_reference
    root = tmp_path_factory.mktemp("released")
    genes = sorted(json.loads(Path(medians).read_text()))[:RELEASED_GENES]
    vocab = Vocabulary.build(genes, max_time=1500)
    with open(root / "token_dictionary.pkl", "wb") as handle:
        pickle.dump(dict(vocab.token_to_id), handle)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("217m", len(vocab)))
    model.save_pretrained(root / "released-217m")
    del model
    tokenize_hsmm(hsmm_path, root / "token_dictionary.pkl", medians, root / "cells", 24)
    assert cli("data", "paragraphs", root / "cells", "--out", root / "eval", "--num-examples", 8, "--eval",
               "--max-seq-len", 256) == 0
    assert cli("data", "paragraphs", root / "cells", "--out", root / "train", "--num-examples", 16,
               "--max-seq-len", 256) == 0
    assert cli("import-hf", root / "released-217m", "--vocab", root / "token_dictionary.pkl",
               "--out", root / "imported") == 0
    return root, vocab


def test_the_released_layout(released):
    _, vocab = released
    assert len(vocab) == 23_277
    assert [vocab[t] for t in ("<pad>", "<mask>", "<bos>", "<eos>", "<boq>", "<eoq>")] == [0, 1, 2, 3, 23_275, 23_276]
    assert vocab["-1500"] == 20_275 and vocab["1499"] == 23_274 and vocab.genes == sorted(vocab.genes)


def test_import_keeps_the_weights_and_records_the_metadata(released):
    from transformers import LlamaForCausalLM

    root, vocab = released
    imported = root / "imported"
    config = json.loads((imported / "config.json").read_text())
    assert config["maxtoki"]["vocabulary_sha256"] == vocab.sha256
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (11, 1232, 8)
    metadata = json.loads((imported / "maxtoki.json").read_text())
    assert metadata["time_unit"] == "months" and metadata["label_scalar"] == 200.0
    assert metadata["numeric_tokens"]["20275"] == -1500 and len(metadata["numeric_tokens"]) == 3000
    assert Vocabulary.load(imported / "vocab.json").sha256 == vocab.sha256
    ids = torch.tensor([[2, 100, 200, 3, vocab.boq_id]])
    with torch.no_grad():
        before = LlamaForCausalLM.from_pretrained(root / "released-217m")(input_ids=ids).logits
        after = LlamaForCausalLM.from_pretrained(imported)(input_ids=ids).logits
    assert torch.equal(before, after)


def test_predict_generate_and_embed_accept_the_imported_model(released):
    import pandas as pd

    root, vocab = released
    imported = root / "imported"
    assert cli("predict", "time", "--checkpoint", imported, "--data", root / "eval", "--out", root / "predicted") == 0
    table = pd.read_csv(root / "predicted" / "predictions.csv")
    assert len(table) == json.loads((root / "predicted" / "metrics.json").read_text())["examples"] > 0
    assert table["predicted_timelapse"].between(-1500, 1499).all()
    assert cli("generate", "--checkpoint", imported, "--data", root / "eval", "--out", root / "generated",
               "--max-new-tokens", 5) == 0
    cells = [json.loads(line) for line in (root / "generated" / "tokens.jsonl").read_text().splitlines()]
    assert cells and all(c[0] == vocab.bos_id and len(c) <= 5 for c in cells)
    body = np.array([t for c in cells for t in c[1:] if t != vocab.eos_id])
    assert vocab.is_gene[body].all()  # specials, numerics and query tokens are banned
    assert cli("embed", "--checkpoint", imported, "--data", root / "cells", "--out", root / "embedded.h5ad") == 0
    embedded = ad.read_h5ad(root / "embedded.h5ad")
    assert embedded.obsm["X_maxtoki"].shape == (embedded.n_obs, 1232)
    assert np.isfinite(embedded.obsm["X_maxtoki"]).all()


def test_stage2_training_starts_from_the_imported_model(released, tmp_path):
    from omegaconf import OmegaConf

    from maxtoki.training import train_from_recipe

    root, _ = released
    recipe = OmegaConf.load(ROOT / "configs/temporal/217m.yaml")
    recipe.loggers = {"inmemory": {}}  # the GPU recipe's wandb and monitors replaced, the rest kept
    recipe.callbacks = {}
    OmegaConf.save(recipe, tmp_path / "217m-cpu.yaml")
    trainer = train_from_recipe(str(tmp_path / "217m-cpu.yaml"), [
        f"variables.data={root / 'train'}", f"variables.eval_data={root / 'train'}",
        f"variables.vocab={root / 'imported' / 'vocab.json'}", f"model.pretrained={root / 'imported'}",
        "load_path=null", "model.attn_implementation=sdpa", "model.init_device=cpu", "max_seq_len=256",
        "model.rope_scaling=null",
        "precision=fp32", "fsdp_config=null", "device_train_microbatch_size=2", "global_train_batch_size=2",
        "device_eval_batch_size=2", "max_duration=2ba", "eval_interval=2ba", "eval_subset_num_batches=1",
        "save_interval=2ba", f"save_folder={tmp_path / 'run'}", "scheduler.t_warmup=0ba",
        "train_loader.num_workers=0", "train_loader.persistent_workers=false", "train_loader.pin_memory=false",
        "train_loader.prefetch_factor=null", "eval_loader.num_workers=0"])
    assert int(trainer.state.timestamp.batch) == 2
    assert (tmp_path / "run" / "latest-rank0.pt").exists()
    first_layer = trainer.state.model.model.model.layers[0].mlp.up_proj.weight
    from transformers import LlamaForCausalLM

    start = LlamaForCausalLM.from_pretrained(root / "imported").model.layers[0].mlp.up_proj.weight
    change = (first_layer.detach() - start).abs().max().item()
    assert 0 < change < 0.1  # started from the imported weights and took optimizer steps


def test_import_refuses_what_does_not_fit(released, tmp_path, capsys):
    root, _ = released
    assert cli("import-hf", root / "released-217m", "--out", tmp_path / "x") == 2  # no token dictionary inside
    assert "give it with --vocab" in capsys.readouterr().err
    wrong = {**json.loads((root / "released-217m" / "config.json").read_text()), "pad_token_id": 5}
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "config.json").write_text(json.dumps(wrong))
    assert cli("import-hf", tmp_path / "wrong", "--vocab", root / "token_dictionary.pkl", "--out", tmp_path / "y") == 2
    assert "pad_token_id=5" in capsys.readouterr().err
    assert cli("import-hf", tmp_path, "--vocab", root / "token_dictionary.pkl", "--out", tmp_path / "z") == 2
    assert "no config.json" in capsys.readouterr().err
    Vocabulary.build([f"ENSG{i:011d}" for i in range(25_000)]).save(tmp_path / "big.json")
    assert cli("import-hf", root / "released-217m", "--vocab", tmp_path / "big.json", "--out", tmp_path / "w") == 2
    assert "23296 embedding rows" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "x").exists()
