"""import-hf of the released MaxToki weights as they are: a 20,275-row stage-1 ``LlamaForCausalLM`` with
token_dictionary_v1.json becomes a model in the 23,277-token stage-2 layout, the released rows unchanged,
its time tokens marked untrained; what does not belong together is refused and nothing is written."""

import gzip
import hashlib
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from helpers.released import RELEASED_ROWS, released_config, write_dictionary, write_release

from maxtoki.cli import main as cli_main
from maxtoki.released import RELEASED_DIR, released_vocabulary
from maxtoki.vocab import Vocabulary

ROOT = Path(__file__).resolve().parent.parent
DICTIONARY_SHA = "b4577f7a983ae1878e1c5db8862ccb46987e904bc2759bd305960fbb838ccb15"
MEDIANS_SHA = "8ced5c2b1e5e6d3310128c627b3dc98f2a9d1f397bb6f30103d78d40360abec5"


def cli(*argv):
    return cli_main([str(a) for a in argv])


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.uint8)


@pytest.fixture(scope="module")
def released(tmp_path_factory, hsmm_path):
    """A 217M-shaped release (random weights, the published config) imported, and HSMM data made with the
    released vocabulary and medians (maxtoki data released)."""
    root = tmp_path_factory.mktemp("released")
    write_release(root / "MaxToki-217M", released_config(hidden=1232, layers=11, heads=8, intermediate=2464))
    assert cli("data", "released", "--out", root / "resources") == 0
    assert cli("import-hf", root / "MaxToki-217M", "--out", root / "imported") == 0
    resources = root / "resources"
    assert cli("data", "tokenize", hsmm_path, "--vocab", resources / "vocab.json", "--medians",
               resources / "medians.json", "--out", root / "cells", "--allow-non-integer", "--min-expression", 0.1,
               "--time-column", "hours", "--model-input-size", 24) == 0
    assert cli("data", "paragraphs", root / "cells", "--out", root / "eval", "--num-examples", 8, "--eval",
               "--max-seq-len", 256) == 0
    assert cli("data", "paragraphs", root / "cells", "--out", root / "train", "--num-examples", 16,
               "--max-seq-len", 256) == 0
    return root


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_release")
    return write_release(root / "release", released_config(hidden=64, layers=2, heads=4))


def test_the_bundled_release_files(tmp_path, capsys):
    assert hashlib.sha256(gzip.decompress((RELEASED_DIR / "token_dictionary_v1.json.gz").read_bytes())).hexdigest() \
        == DICTIONARY_SHA
    assert cli("data", "released", "--out", tmp_path) == 0
    assert hashlib.sha256((tmp_path / "medians.json").read_bytes()).hexdigest() == MEDIANS_SHA
    assert "Apache License 2.0" in (tmp_path / "ATTRIBUTION.md").read_text()
    vocab = Vocabulary.load(tmp_path / "vocab.json")
    original = json.loads(gzip.decompress((RELEASED_DIR / "token_dictionary_v1.json.gz").read_bytes()))
    assert len(original) == RELEASED_ROWS and all(vocab[token] == i for token, i in original.items())
    assert len(vocab) == 23_277
    assert [vocab[t] for t in ("<pad>", "<mask>", "<bos>", "<eos>", "<boq>", "<eoq>")] == [0, 1, 2, 3, 23_275, 23_276]
    assert vocab["-1500"] == 20_275 and vocab["0"] == 21_775 and vocab["1499"] == 23_274
    assert "23,277 tokens" in capsys.readouterr().out
    # a vocabulary of every gene with a released median is not the released one: data vocab says so
    assert cli("data", "vocab", "--medians", tmp_path / "medians.json", "--out", tmp_path / "all.json") == 0
    assert "maxtoki data released" in capsys.readouterr().err


def test_tokenize_with_the_released_files_encodes_as_the_reference(tmp_path, pbmc_path):
    """Rank value encoding recomputed here cell by cell from the raw counts: count / total count * 10,000 /
    released median, genes of the released dictionary only, descending, ties by token id, <bos> ... <eos>."""
    from maxtoki.data.paragraphs.cell_store import CellStore

    assert cli("data", "released", "--out", tmp_path / "released") == 0
    assert cli("data", "tokenize", pbmc_path, "--vocab", tmp_path / "released" / "vocab.json", "--medians",
               tmp_path / "released" / "medians.json", "--gene-id-column", "ensembl_id", "--out",
               tmp_path / "cells", "--model-input-size", 512) == 0
    dictionary = json.loads(gzip.decompress((RELEASED_DIR / "token_dictionary_v1.json.gz").read_bytes()))
    medians = json.loads(gzip.decompress((RELEASED_DIR / "gene_median_dictionary_v1.json.gz").read_bytes()))
    adata = ad.read_h5ad(pbmc_path)
    counts = adata.X.tocsr()
    genes = adata.var["ensembl_id"].to_numpy()
    token = np.array([dictionary.get(g, -1) for g in genes])
    median = np.array([medians.get(g, np.nan) for g in genes])
    store = CellStore(str(tmp_path / "cells"))
    assert len(store) == adata.n_obs
    checked = 0
    for i in range(0, adata.n_obs, 27):
        row = counts[i]
        total = float(row.sum())
        entries = [(float(v) / total * 10_000 / median[j], int(token[j]))
                   for j, v in zip(row.indices, row.data) if token[j] >= 0 and v > 0]
        expected = [2] + [t for _, t in sorted(entries, key=lambda e: (-e[0], e[1]))][:510] + [3]
        assert list(np.asarray(store[i]["input_ids"])) == expected, f"cell {i}"
        checked += 1
    assert checked == 100


def test_import_keeps_every_released_row_and_computes_the_same(released):
    from transformers import LlamaForCausalLM

    imported = released / "imported"
    vocab = Vocabulary.load(imported / "vocab.json")
    assert vocab.sha256 == released_vocabulary().sha256
    config = json.loads((imported / "config.json").read_text())
    assert config["vocab_size"] == 23_296 and config["maxtoki"]["time_tokens_trained"] is False
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (11, 1232, 8)
    metadata = json.loads((imported / "maxtoki.json").read_text())
    assert metadata["time_tokens_trained"] is False and metadata["objective"] == "pretrain"
    assert metadata["new_token_rows"] == {"ids": [20_275, 23_295], "init": "mean", "seed": 0}
    assert metadata["source_vocab_size"] == RELEASED_ROWS and len(metadata["numeric_tokens"]) == 3000
    source = LlamaForCausalLM.from_pretrained(released / "MaxToki-217M").eval()
    model = LlamaForCausalLM.from_pretrained(imported).eval()
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        before, after = source.state_dict()[name], model.state_dict()[name]
        assert torch.equal(bits(before), bits(after[:RELEASED_ROWS])), name
    new_inputs = model.model.embed_tokens.weight[RELEASED_ROWS:]
    assert torch.unique(new_inputs, dim=0).shape[0] == len(new_inputs)  # every new token distinct
    gene_mean = source.model.embed_tokens.weight[4:].mean(dim=0)
    assert (new_inputs.mean(dim=0) - gene_mean).abs().max() < 0.01
    out_mean = source.lm_head.weight[4:].mean(dim=0)
    assert torch.allclose(model.lm_head.weight[RELEASED_ROWS:], out_mean.expand(23_296 - RELEASED_ROWS, -1))
    ids = torch.tensor([[2, 4, 100, 5_000, 20_274, 17, 3]])
    with torch.no_grad():
        expected, got = source(input_ids=ids).logits, model(input_ids=ids).logits
    assert (got[..., :RELEASED_ROWS] - expected).abs().max() < 1e-5


def test_the_1b_dictionary_and_bf16_weights_import_alike(tiny_release, tmp_path):
    from safetensors.torch import load_file

    one_b = {**json.loads((tiny_release / "token_dictionary_v1.json").read_text()), "<boq>": 23_275, "<eoq>": 23_276}
    (tmp_path / "1b.json").write_text(json.dumps(one_b))
    assert cli("import-hf", tiny_release, "--vocab", tmp_path / "1b.json", "--out", tmp_path / "from-1b") == 0
    assert Vocabulary.load(tmp_path / "from-1b" / "vocab.json").sha256 == released_vocabulary().sha256
    write_release(tmp_path / "bf16", released_config(hidden=64, layers=2, heads=4), dtype=torch.bfloat16)
    assert cli("import-hf", tmp_path / "bf16", "--out", tmp_path / "imported-bf16", "--new-token-init", "random") == 0
    source, imported = load_file(tmp_path / "bf16" / "model.safetensors"), \
        load_file(tmp_path / "imported-bf16" / "model.safetensors")
    assert imported["lm_head.weight"].dtype == torch.bfloat16
    for name, tensor in source.items():
        kept = imported[name][:RELEASED_ROWS] if name in ("model.embed_tokens.weight", "lm_head.weight") \
            else imported[name]
        assert torch.equal(bits(tensor), bits(kept)), name
    new = imported["lm_head.weight"][RELEASED_ROWS:].float()
    assert 0.015 < new.std().item() < 0.025  # N(0, initializer_range = 0.02)


def _shifted_217m_dictionary(genes: list[str]) -> dict:
    """The 217M dictionary that circulates: <eos>=2, genes from 3, numerics, <boq>, <eoq>, <bos> at the end."""
    table = {"<pad>": 0, "<mask>": 1, "<eos>": 2, **{g: 3 + i for i, g in enumerate(genes)}}
    table.update({str(t): 20_274 + i for i, t in enumerate(range(-1500, 1500))})
    return {**table, "<boq>": 23_274, "<eoq>": 23_275, "<bos>": 23_276}


def test_import_refuses_what_does_not_belong_together(tiny_release, tmp_path, capsys):
    dictionary = json.loads((tiny_release / "token_dictionary_v1.json").read_text())
    genes = sorted(token for token in dictionary if not token.startswith("<"))
    (tmp_path / "shifted.json").write_text(json.dumps(_shifted_217m_dictionary(genes)))
    swapped = dict(dictionary)
    swapped[genes[10]], swapped[genes[11]] = dictionary[genes[11]], dictionary[genes[10]]
    (tmp_path / "unsorted.json").write_text(json.dumps(swapped))
    bigger = {**dictionary, **{f"ENSG9{i:010d}": RELEASED_ROWS + i for i in range(5)}}
    (tmp_path / "bigger.json").write_text(json.dumps(bigger))
    config = json.loads((tiny_release / "config.json").read_text())
    for name, changes in (("wrong-eos", {"eos_token_id": 2}), ("gpt2", {"model_type": "gpt2",
                                                                        "architectures": ["GPT2LMHeadModel"]})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({**config, **changes}))
        write_dictionary(tmp_path / name)
    cases = [
        ((tiny_release, "--vocab", tmp_path / "shifted.json"), "shifted by one against the released weights"),
        ((tiny_release, "--vocab", tmp_path / "unsorted.json"), f"genes out of the released (sorted) order: id 15 is "
                                                                f"{genes[10]}, after {genes[11]}"),
        ((tiny_release, "--vocab", tmp_path / "bigger.json"), "the model has 20,275 embedding rows, the token "
                                                              "dictionary"),
        ((tmp_path / "wrong-eos",), "config.json says eos_token_id=2"),
        ((tmp_path / "gpt2",), "a 'gpt2' model"),
        ((tmp_path,), "no config.json"),
    ]
    for args, message in cases:
        out = tmp_path / "never"
        assert cli("import-hf", *args, "--out", out) == 2, message
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and not (tmp_path / ".never.importing").exists()
    no_dictionary = tmp_path / "no-dictionary"
    write_release(no_dictionary, released_config(hidden=64, layers=2, heads=4))
    (no_dictionary / "token_dictionary_v1.json").unlink()
    assert cli("import-hf", no_dictionary, "--out", tmp_path / "never") == 2
    assert "give it with --vocab" in capsys.readouterr().err


def test_time_readouts_refuse_untrained_time_tokens_and_embed_works(released, capsys):
    imported = released / "imported"
    assert cli("predict", "time", "--checkpoint", imported, "--data", released / "eval",
               "--out", released / "refused") == 2
    err = capsys.readouterr().err
    assert "time tokens were never trained" in err and "run stage 2 on it first" in err
    assert not (released / "refused").exists()
    assert cli("generate", "--checkpoint", imported, "--data", released / "eval", "--out", released / "refused",
               "--max-new-tokens", 3) == 2
    assert "--allow-untrained-time" in capsys.readouterr().err
    assert cli("predict", "time", "--checkpoint", imported, "--data", released / "eval", "--out",
               released / "noise", "--allow-untrained-time") == 0
    metrics = json.loads((released / "noise" / "metrics.json").read_text())
    assert "never trained" in metrics["warning"] and "Warning: " in capsys.readouterr().out
    assert cli("embed", "--checkpoint", imported, "--data", released / "cells", "--out", released / "cells.h5ad") == 0
    embedded = ad.read_h5ad(released / "cells.h5ad")
    assert embedded.obsm["X_maxtoki"].shape == (embedded.n_obs, 1232)
    assert np.isfinite(embedded.obsm["X_maxtoki"]).all()


def test_stage2_by_the_217m_recipe_starts_from_the_imported_release(released, tmp_path):
    from omegaconf import OmegaConf
    from transformers import LlamaForCausalLM

    from maxtoki.inference.loading import load_model, untrained_time_warning
    from maxtoki.training import train_from_recipe

    recipe = OmegaConf.load(ROOT / "configs/temporal/217m.yaml")
    recipe.loggers = {"inmemory": {}}  # the GPU recipe's wandb and monitors replaced, the rest kept
    recipe.callbacks = {}
    OmegaConf.save(recipe, tmp_path / "217m-cpu.yaml")
    imported = released / "imported"
    trainer = train_from_recipe(str(tmp_path / "217m-cpu.yaml"), [  # load_path stays the recipe's: not read
        f"model.pretrained={imported}", f"variables.vocab={imported / 'vocab.json'}",
        f"variables.data={released / 'train'}", f"variables.eval_data={released / 'train'}",
        "model.attn_implementation=sdpa", "model.init_device=cpu", "max_seq_len=256",
        "model.rope_scaling.factor=1.0", "model.rope_scaling.original_max_position_embeddings=256",
        "precision=fp32", "fsdp_config=null", "device_train_microbatch_size=2", "global_train_batch_size=2",
        "device_eval_batch_size=2", "max_duration=2ba", "eval_interval=2ba", "eval_subset_num_batches=1",
        "save_interval=2ba", "save_weights_only=true", f"save_folder={tmp_path / 'run'}", "scheduler.t_warmup=0ba",
        "train_loader.num_workers=0", "train_loader.persistent_workers=false", "train_loader.pin_memory=false",
        "train_loader.prefetch_factor=null", "eval_loader.num_workers=0"])
    assert int(trainer.state.timestamp.batch) == 2
    trained = trainer.state.model.model.model.layers[0].mlp.up_proj.weight.detach()
    start = LlamaForCausalLM.from_pretrained(imported).model.layers[0].mlp.up_proj.weight
    assert 0 < (trained - start).abs().max().item() < 0.1  # started from the imported weights and took steps
    model, _ = load_model(tmp_path / "run" / "latest-rank0.pt", imported / "vocab.json")
    assert untrained_time_warning(model) is None  # stage 2 has run on it: its time tokens count as trained
