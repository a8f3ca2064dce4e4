"""A ``LlamaForCausalLM`` directory (e.g. the released MaxToki weights) -> a MaxToki model directory.

The released weights are stage-1 only: 20,275 embedding rows, no time tokens, no ``<boq>``/``<eoq>``.
Import checks that weights, config and token dictionary belong together (special ids, gene order,
row counts), then writes the stage-2 layout (``maxtoki.released``): every released row byte for
byte at its id, new rows for the time tokens and query markers initialised on purpose
(``new_token_rows``), the vocabulary padded to a multiple of 128 rows as every MaxToki model is.
The directory records that its time tokens are untrained until stage 2 has run on it, so that
time read-outs refuse it. Nothing is written unless every check passes; the output appears whole
or not at all. Weights are read and written as tensors (safetensors), in their own dtype, so a
217M or 1B model imports in seconds with little more memory than its weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from maxtoki.errors import MaxtokiError
from maxtoki.inference.new_token_rows import INIT_METHODS, new_rows
from maxtoki.released import DICTIONARY_FILE, released_token_count, stage2_layout
from maxtoki.vocab import BOS, EOS, PAD, VOCAB_FILE, Vocabulary

VOCAB_CANDIDATES = (VOCAB_FILE, DICTIONARY_FILE, "token_dictionary.json", "token_dictionary.pkl")
EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")


def find_vocabulary(source: Path, vocab_path: str | Path | None) -> tuple[Vocabulary, str]:
    """The given token dictionary, or one shipped inside the source directory, and its name for messages."""
    if vocab_path is not None:
        return Vocabulary.load(vocab_path), str(vocab_path)
    for name in VOCAB_CANDIDATES:
        if (source / name).exists():
            return Vocabulary.load(source / name), str(source / name)
    raise MaxtokiError(f"{source}: no token dictionary inside ({', '.join(VOCAB_CANDIDATES)}); give it with --vocab "
                       "(the released one: maxtoki data released --out DIR, then --vocab DIR/vocab.json)")


def read_llama_config(source: Path) -> dict:
    if not (source / "config.json").exists():
        raise MaxtokiError(f"{source}: no config.json; give a Hugging Face model directory (save_pretrained)")
    try:
        config = json.loads((source / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise MaxtokiError(f"{source / 'config.json'}: not JSON ({exc})") from None
    architectures = config.get("architectures") or ["LlamaForCausalLM"]
    if config.get("model_type") != "llama" or "LlamaForCausalLM" not in architectures:
        raise MaxtokiError(f"{source}: config.json describes a {config.get('model_type')!r} model "
                           f"({', '.join(architectures)}); MaxToki models are LlamaForCausalLM (model_type llama)")
    return config


def check_specials(dictionary: Vocabulary, config: dict, name: str, source: Path) -> None:
    for key, token in (("pad_token_id", PAD), ("bos_token_id", BOS), ("eos_token_id", EOS)):
        if config.get(key) is not None and config[key] != dictionary[token]:
            raise MaxtokiError(f"{source}: config.json says {key}={config[key]}, the token dictionary {name} has "
                               f"{token}={dictionary[token]}; they do not belong together")


def read_weights(source: Path) -> dict:
    """Every tensor of the source, as saved (safetensors, sharded or not, or pytorch_model.bin)."""
    import torch
    from safetensors.torch import load_file

    index = source / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (source / "model.safetensors").exists():
        files = ["model.safetensors"]
    elif (source / "pytorch_model.bin").exists():
        return torch.load(source / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
    else:
        raise MaxtokiError(f"{source}: no weights (model.safetensors, its index, or pytorch_model.bin)")
    weights = {}
    for file in files:
        try:
            weights.update(load_file(source / file))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise MaxtokiError(f"{source / file}: cannot read the weights ({exc})") from None
    return weights


def check_weights(weights: dict, config: dict, source: Path) -> None:
    """The tensors are exactly those of a ``LlamaForCausalLM`` of ``config``, shape for shape."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        expected = {key: tuple(value.shape)
                    for key, value in LlamaForCausalLM(LlamaConfig.from_dict(config)).state_dict().items()}
    if config.get("tie_word_embeddings"):
        expected.pop("lm_head.weight", None)
        weights.pop("lm_head.weight", None)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [key for key in expected if key in weights and tuple(weights[key].shape) != expected[key]]
    if missing or unexpected or wrong:
        problem = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected else
                   f"{wrong[0]} is {tuple(weights[wrong[0]].shape)}, config.json makes it {expected[wrong[0]]}")
        raise MaxtokiError(f"{source}: the weights are not a LlamaForCausalLM of its config.json ({problem})")


def import_hf(source: str | Path, out: str | Path, vocab_path: str | Path | None = None,
              time_unit: str = "months", label_scalar: float = 200.0, additive_penalty: float = 10.0,
              timelapse_loss: str = "numeric", new_token_init: str = "mean", seed: int = 0) -> Path:
    """Check and convert; returns the output directory."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from maxtoki.inference.export import time_tokens_trained, write_metadata
    from maxtoki.model.sizes import padded_vocab_size

    source, out = Path(source), Path(out)
    if new_token_init not in INIT_METHODS:
        raise MaxtokiError(f"--new-token-init {new_token_init!r}: choose one of {', '.join(INIT_METHODS)}")
    config = read_llama_config(source)
    if out.resolve() == source.resolve():
        raise MaxtokiError("--out must be another directory than the source")
    if out.exists() and any(out.iterdir()) and not (out / "maxtoki.json").exists():
        raise MaxtokiError(f"--out {out}: exists and holds something other than an imported model; give a new "
                           "directory")
    dictionary, name = find_vocabulary(source, vocab_path)
    layout = stage2_layout(dictionary, name)
    check_specials(dictionary, config, name, source)
    rows, released = int(config.get("vocab_size", 0)), released_token_count(dictionary)
    if released > rows:
        raise MaxtokiError(f"{source}: the model has {rows:,} embedding rows, the token dictionary {name} "
                           f"{released:,} tokens; they do not belong together")
    weights = read_weights(source)
    check_weights(weights, config, source)
    settings = dict(config.get("maxtoki") or {})
    extend = not dictionary.is_numeric.any()
    if not extend and len(layout) > rows:
        raise MaxtokiError(f"{source}: the model has {rows:,} embedding rows, the token dictionary {name} "
                           f"{len(layout):,} tokens; they do not belong together")
    new_size = max(rows, padded_vocab_size(len(layout))) if extend else rows
    if extend:
        generator = torch.Generator().manual_seed(seed)
        std = float(config.get("initializer_range", 0.02))
        for key in EMBEDDINGS:
            if key in weights:
                kept = weights[key][:released]
                weights[key] = torch.cat([kept, new_rows(kept, new_size - released, new_token_init,
                                                         key == "lm_head.weight", std, generator)])
    trained = not extend and time_tokens_trained(settings)
    settings = {"label_scalar": float(label_scalar), "additive_penalty": float(additive_penalty),
                "timelapse_loss": timelapse_loss, **settings, "vocabulary_sha256": layout.sha256,
                "imported_from": str(source)}
    if not trained:
        settings.update(objective="pretrain", time_tokens_trained=False)
    hf_config = LlamaConfig.from_dict({**config, "vocab_size": new_size})
    hf_config.maxtoki = settings
    staging = out.parent / f".{out.name}.importing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_file({key: value.contiguous() for key, value in weights.items()}, staging / "model.safetensors",
                  metadata={"format": "pt"})
        hf_config.save_pretrained(staging)
        new = {"new_token_rows": {"ids": [released, new_size - 1], "init": new_token_init, "seed": seed}} \
            if extend else {}
        write_metadata(hf_config, layout, staging, time_unit,
                       {"imported_from": str(source), "source_vocab_size": rows, **new})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
