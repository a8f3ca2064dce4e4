"""Composer checkpoint -> Hugging Face directory that ``LlamaForCausalLM.from_pretrained`` loads.

Beside the weights and ``config.json`` the directory holds ``vocab.json`` (the token dictionary)
and ``maxtoki.json``: the numeric token map (token id -> time value), the TimeBetweenCells
read-out settings (label_scalar, additive_penalty), the time unit and the RoPE scaling, so the
model can be used without the recipe that trained it.
"""

from __future__ import annotations

import json
from pathlib import Path

from maxtoki.errors import MaxtokiError
from maxtoki.inference.loading import load_composer_checkpoint
from maxtoki.vocab import VOCAB_FILE, Vocabulary

METADATA_NAME = "maxtoki.json"


def export_hf(checkpoint: str, out: str | Path, vocab_path: str | Path, time_unit: str = "unspecified") -> Path:
    """Write the Hugging Face directory; refuses a vocabulary other than the model's."""
    model = load_composer_checkpoint(checkpoint)
    vocab = Vocabulary.load(vocab_path)
    settings = getattr(model.config, "maxtoki", None) or {}
    if settings.get("vocabulary_sha256") and settings["vocabulary_sha256"] != vocab.sha256:
        raise MaxtokiError(f"{vocab_path}: not the vocabulary this model was trained with")
    return write_model_directory(model, vocab, out, time_unit)


def write_model_directory(model, vocab: Vocabulary, out: str | Path, time_unit: str) -> Path:
    """Weights and ``config.json`` (``save_pretrained``), ``vocab.json`` and ``maxtoki.json`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    write_metadata(model.config, vocab, out, time_unit)
    return out


def time_tokens_trained(settings: dict) -> bool:
    """Whether stage 2 trained the time tokens of a model with these ``config.maxtoki`` settings: a stage-1 model
    (and imported released weights) never used them."""
    return settings.get("objective") == "temporal" and settings.get("time_tokens_trained", True) is not False


def write_metadata(config, vocab: Vocabulary, out: Path, time_unit: str, extra: dict | None = None) -> None:
    """``vocab.json`` and ``maxtoki.json`` beside the weights of a model directory."""
    settings = dict(getattr(config, "maxtoki", None) or {})
    vocab.save(out / VOCAB_FILE)
    metadata = {
        "objective": settings.get("objective"),
        "time_tokens_trained": time_tokens_trained(settings),
        "label_scalar": settings.get("label_scalar"),
        "additive_penalty": settings.get("additive_penalty"),
        "timelapse_loss": settings.get("timelapse_loss"),
        "time_unit": time_unit,
        "rope_scaling": config.rope_scaling,
        "max_position_embeddings": config.max_position_embeddings,
        "vocabulary_sha256": vocab.sha256,
        "special_tokens": {name: vocab.get(name) for name in ("<pad>", "<mask>", "<bos>", "<eos>", "<boq>", "<eoq>")},
        "numeric_tokens": {str(int(i)): int(vocab.numeric_values[i]) for i in vocab.numeric_ids},
        **(extra or {}),
    }
    (out / METADATA_NAME).write_text(json.dumps(metadata, indent=1) + "\n")
