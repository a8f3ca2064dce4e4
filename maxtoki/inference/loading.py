"""A trained model, loaded once: a Composer checkpoint (local or ``s3://``) or a Hugging Face directory made
by ``export-hf`` or ``import-hf``, together with the vocabulary its tokens belong to.

A model directory holds its ``vocab.json``; a Composer checkpoint holds only the vocabulary's checksum, so
its vocabulary is given (the training data's ``vocab.json``, or the data's own). Either way the model is
checked against that vocabulary, so that a token means what it meant in training. The inference functions
take a checkpoint path or a model loaded here, so that Python users load once and run several of them::

    model, vocab = load_model("run/latest-rank0.pt", "data/vocab.json")
    predict_time(model, "paragraphs/test", "predictions")
    embed(model, "cells", "embedded.h5ad")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from maxtoki.checkpoint_files import check_checkpoint_file
from maxtoki.errors import MaxtokiError
from maxtoki.vocab import VOCAB_FILE, Vocabulary

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM


def load_model(checkpoint: str | Path, vocab: Vocabulary | str | Path | None = None
               ) -> tuple[LlamaForCausalLM, Vocabulary]:
    """The model (in eval mode) and its vocabulary: ``vocab`` (a ``Vocabulary`` or a vocab.json file), by
    default the model directory's vocab.json. Refuses a vocabulary the model was not trained with."""
    from transformers import LlamaForCausalLM

    vocabulary = _given_or_bundled(checkpoint, vocab)
    if vocabulary is None:
        raise MaxtokiError(f"{checkpoint}: a Composer checkpoint holds only its vocabulary's checksum; give the "
                           "vocabulary (vocab=, the vocab.json of the training data) or load a directory made by "
                           "export-hf")
    checkpoint = str(checkpoint)
    if (Path(checkpoint) / "config.json").exists():
        model = LlamaForCausalLM.from_pretrained(checkpoint).eval()
    else:
        model = load_composer_checkpoint(checkpoint)
    _check_vocabulary(model, vocabulary, checkpoint)
    return model, vocabulary


def model_for(model: str | Path | LlamaForCausalLM, vocab: Vocabulary) -> LlamaForCausalLM:
    """The model that reads data of ``vocab``: loaded from a checkpoint path, or the loaded one given, checked."""
    if isinstance(model, (str, Path)):
        return load_model(model, vocab)[0]
    _check_vocabulary(model, vocab, model_name(model))
    return model


def model_name(model: str | Path | LlamaForCausalLM) -> str:
    """A checkpoint's path, or where a loaded model came from where it says, for messages and records."""
    if isinstance(model, (str, Path)):
        return str(model)
    return getattr(model, "name_or_path", "") or "the given model"


def model_vocabulary(model: str | Path | LlamaForCausalLM, vocab: Vocabulary | str | Path | None = None
                     ) -> Vocabulary:
    """``vocab`` if given, else the vocab.json of a model directory made by export-hf or import-hf; needed to
    tokenize an .h5ad for a model (a Composer checkpoint holds only its vocabulary's checksum)."""
    vocabulary = _given_or_bundled(model, vocab)
    if vocabulary is None:
        raise MaxtokiError("tokenizing an .h5ad needs the model's vocabulary: give --vocab (the vocab.json of the "
                           "training data) or a --checkpoint directory made by export-hf")
    return vocabulary


def untrained_time_warning(model, allow: bool = False) -> str | None:
    """None for a model whose time tokens stage 2 trained. For one whose time tokens never were (a stage-1 model,
    imported released weights), the read-outs of those rows are noise that looks like numbers: an error, or with
    ``allow`` the warning that the outputs then carry."""
    from maxtoki.inference.export import time_tokens_trained

    if time_tokens_trained(getattr(model.config, "maxtoki", None) or {}):
        return None
    name = model_name(model)
    problem = (f"{name}: its time tokens were never trained (a stage-1 model, such as imported released weights): "
               "predicted times and generated cells would be noise that looks like numbers")
    if allow:
        return f"{problem}; read anyway (--allow-untrained-time)"
    raise MaxtokiError(f"{problem}; run stage 2 on it first (maxtoki pipeline DATA.h5ad --time-column COL "
                       f"--pretrained {name} --out DIR), or give --allow-untrained-time to read it anyway")


def _given_or_bundled(model, vocab: Vocabulary | str | Path | None) -> Vocabulary | None:
    if isinstance(vocab, Vocabulary):
        return vocab
    if vocab:
        return Vocabulary.load(vocab)
    if isinstance(model, (str, Path)) and (Path(model) / VOCAB_FILE).exists():
        return Vocabulary.load(Path(model) / VOCAB_FILE)
    return None


def _check_vocabulary(model, vocab: Vocabulary, name: str) -> None:
    expected = (getattr(model.config, "maxtoki", None) or {}).get("vocabulary_sha256")
    if expected and expected != vocab.sha256:
        raise MaxtokiError(f"{name}: the model was trained with another vocabulary than the data's")
    if model.config.vocab_size < len(vocab):
        raise MaxtokiError(f"{name}: the model knows {model.config.vocab_size} tokens, the data uses "
                           f"{len(vocab)}")


def load_composer_checkpoint(checkpoint: str):
    """The ``LlamaForCausalLM`` (config and weights) inside a Composer checkpoint of a MaxToki model."""
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from maxtoki import storage
    from maxtoki.model.head_padding import unpad_heads

    local = checkpoint
    if storage.is_remote(checkpoint):
        resolved = storage.resolve_checkpoint(checkpoint)
        local = str(Path(tempfile.mkdtemp(prefix="maxtoki-ckpt-")) / Path(resolved).name)
        storage.download_file(resolved, local)
    elif not Path(checkpoint).exists():
        raise MaxtokiError(f"{checkpoint}: no such checkpoint")
    check_checkpoint_file(local, checkpoint)
    try:
        state = torch.load(local, map_location="cpu", weights_only=False)["state"]
        content = state["integrations"]["huggingface"]["model"]["config"]["content"]
        weights = {k[len("model."):]: v for k, v in state["model"].items() if k.startswith("model.")}
        config = LlamaConfig.from_dict(content)
        config._attn_implementation = "sdpa"  # the checkpoint records none: eager would be the default, 3x slower
        model = LlamaForCausalLM(config)
        model.load_state_dict(weights, strict=True)
        unpad_heads(model)  # a run with padded heads (fused attention) computes exactly what the unpadded model does
    except (KeyError, RuntimeError, EOFError, OSError, TypeError) as exc:
        raise MaxtokiError(f"{checkpoint}: not a MaxToki Composer checkpoint, or damaged ({exc})") from None
    return model.eval()
