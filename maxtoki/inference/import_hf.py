"""A ``LlamaForCausalLM`` directory (e.g. released MaxToki weights) -> a MaxToki model directory.

Released weights come as a plain Hugging Face directory and a token dictionary beside it. Import
checks that the two fit together (the MaxToki token layout, enough embedding rows, the special
token ids the config names) and writes the directory ``export-hf`` would have written: the
weights, a config that records the vocabulary's checksum and the TimeBetweenCells read-out
settings, ``vocab.json`` and ``maxtoki.json``. ``predict time``, ``generate`` and ``embed`` take
it as ``--checkpoint``, and stage-2 training starts from it with ``model.pretrained=DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

from maxtoki.errors import MaxtokiError
from maxtoki.inference.export import write_model_directory
from maxtoki.vocab import VOCAB_FILE, Vocabulary

VOCAB_CANDIDATES = (VOCAB_FILE, "token_dictionary.pkl", "token_dictionary.json")


def find_vocabulary(source: Path, vocab_path: str | Path | None) -> Vocabulary:
    """The given token dictionary, or one shipped inside the source directory."""
    if vocab_path is not None:
        return Vocabulary.load(vocab_path)
    for name in VOCAB_CANDIDATES:
        if (source / name).exists():
            return Vocabulary.load(source / name)
    raise MaxtokiError(f"{source}: no token dictionary inside ({', '.join(VOCAB_CANDIDATES)}); give it with --vocab")


def check_layout(vocab: Vocabulary, config: dict, source: Path) -> None:
    """The MaxToki token layout, and a model big enough for it whose special ids agree with it."""
    for name in ("<pad>", "<bos>", "<eos>", "<boq>", "<eoq>"):
        if name not in vocab:
            raise MaxtokiError(f"the token dictionary has no {name}: not a MaxToki vocabulary")
    if not vocab.is_numeric.any() or not vocab.is_gene.any():
        raise MaxtokiError("the token dictionary needs gene tokens and numeric time tokens: not a MaxToki vocabulary")
    if config.get("vocab_size", 0) < len(vocab):
        raise MaxtokiError(f"{source}: the model has {config.get('vocab_size')} embedding rows, the token dictionary "
                           f"{len(vocab):,} tokens; they do not belong together")
    for key, token in (("pad_token_id", "<pad>"), ("bos_token_id", "<bos>"), ("eos_token_id", "<eos>")):
        if config.get(key) is not None and config[key] != vocab[token]:
            raise MaxtokiError(f"{source}: config.json says {key}={config[key]}, the token dictionary has "
                               f"{token}={vocab[token]}; they do not belong together")


def import_hf(source: str | Path, out: str | Path, vocab_path: str | Path | None = None,
              time_unit: str = "months", label_scalar: float = 200.0, additive_penalty: float = 10.0,
              timelapse_loss: str = "numeric") -> Path:
    """Check and convert; returns the output directory."""
    import torch
    from transformers import LlamaForCausalLM

    source = Path(source)
    if not (source / "config.json").exists():
        raise MaxtokiError(f"{source}: no config.json; give a Hugging Face model directory (save_pretrained)")
    config = json.loads((source / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise MaxtokiError(f"{source}: a {config.get('model_type')!r} model; MaxToki models are LlamaForCausalLM")
    if Path(out).resolve() == source.resolve():
        raise MaxtokiError("--out must be another directory than the source")
    vocab = find_vocabulary(source, vocab_path)
    check_layout(vocab, config, source)
    try:
        model = LlamaForCausalLM.from_pretrained(source, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise MaxtokiError(f"{source}: the weights do not load as LlamaForCausalLM ({exc})") from None
    model.config.maxtoki = {"objective": "temporal", "label_scalar": float(label_scalar),
                            "additive_penalty": float(additive_penalty), "timelapse_loss": timelapse_loss,
                            "vocabulary_sha256": vocab.sha256, "imported_from": str(source)}
    return write_model_directory(model, vocab, out, time_unit)
