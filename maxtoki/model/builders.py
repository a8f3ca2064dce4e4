"""The backbone of a recipe's ``model:`` section: a ``LlamaForCausalLM`` of a named size."""

from __future__ import annotations

import logging
from pathlib import Path

from maxtoki.errors import MaxtokiError
from maxtoki.model.sizes import count_parameters, llama_config
from maxtoki.vocab import Vocabulary

logger = logging.getLogger(__name__)


def resolve_attention(requested: str, head_dim: int) -> str:
    """``auto``: flash-attention 2 when installed, on GPU, with a head size it accepts; else SDPA."""
    if requested != "auto":
        return requested
    import importlib.util

    import torch

    if importlib.util.find_spec("flash_attn") and torch.cuda.is_available() and head_dim % 8 == 0 and head_dim <= 256:
        return "flash_attention_2"
    return "sdpa"


def build_backbone(size: str, vocab: str, max_seq_len: int = 4096, rope_scaling: dict | None = None,
                   attn_implementation: str = "auto", pretrained: str | None = None,
                   config_overrides: dict | None = None, init_device: str = "cpu"):
    """A ``LlamaForCausalLM`` and its vocabulary; ``pretrained`` starts from a Hugging Face directory.

    ``init_device="meta"`` allocates no parameters (FSDP materialises them, see ``meta_init``). A
    ``pretrained`` model is read into host memory on every rank, except with ``mixed``, where only
    rank 0 reads it and FSDP sends its weights to the others.
    """
    from transformers import LlamaForCausalLM

    from maxtoki.model.meta_init import attach_param_init_fn, build_on, device_of_this_rank

    if not Path(vocab).exists():
        raise MaxtokiError(f"model.vocab {vocab}: no such file; give the vocabulary the data was made with")
    vocabulary = Vocabulary.load(vocab)
    config = llama_config(size, len(vocabulary), max_position_embeddings=max_seq_len, pad_token_id=vocabulary.pad_id,
                          bos_token_id=vocabulary.bos_id, eos_token_id=vocabulary.eos_id,
                          rope_scaling=rope_scaling, **(config_overrides or {}))
    config._attn_implementation = resolve_attention(attn_implementation, config.head_dim)
    device = device_of_this_rank(init_device)
    if pretrained:
        check_pretrained_vocabulary(pretrained, vocabulary, vocab)
    if pretrained and (device == "cpu" or init_device == "meta"):
        model = LlamaForCausalLM.from_pretrained(pretrained, config=config)
    else:
        model = build_on(device, config)
    attach_param_init_fn(model)
    counts = count_parameters(config)
    logger.info(f"{size} model, {counts['total']:,} parameters ({counts['non_embedding']:,} without embeddings), "
                f"vocabulary {len(vocabulary):,} padded to {config.vocab_size:,}, context {max_seq_len:,}, "
                f"attention {config._attn_implementation}")
    return model, vocabulary


def check_pretrained_vocabulary(pretrained: str, vocabulary: Vocabulary, vocab: str) -> None:
    """A pretrained directory that records its vocabulary (export-hf, import-hf) must match the recipe's."""
    import json

    config_path = Path(pretrained) / "config.json"
    if not config_path.exists():
        raise MaxtokiError(f"model.pretrained {pretrained}: no config.json; give a Hugging Face model directory "
                           "(maxtoki export-hf or import-hf writes one)")
    recorded = (json.loads(config_path.read_text()).get("maxtoki") or {}).get("vocabulary_sha256")
    if recorded and recorded != vocabulary.sha256:
        raise MaxtokiError(f"model.pretrained {pretrained}: trained with another vocabulary than model.vocab {vocab}; "
                           "tokenize the data with the model's vocab.json")
