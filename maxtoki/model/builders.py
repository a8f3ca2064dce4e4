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


def wants_padding(pad_heads: str | bool, config) -> bool:
    """``auto``: pad heads whose size fused kernels refuse when training on GPU (see ``head_padding``)."""
    from maxtoki.model.head_padding import needs_padding

    if pad_heads == "auto":
        import torch

        return torch.cuda.is_available() and needs_padding(config)
    if not isinstance(pad_heads, bool):
        raise MaxtokiError(f"model.pad_heads must be auto, true or false, not {pad_heads!r}")
    return pad_heads and needs_padding(config)


def build_backbone(size: str | None, vocab: str, max_seq_len: int = 4096, rope_scaling: dict | None = None,
                   attn_implementation: str = "auto", pretrained: str | None = None,
                   config_overrides: dict | None = None, init_device: str = "cpu", pad_heads: str | bool = "auto"):
    """A ``LlamaForCausalLM`` and its vocabulary; ``pretrained`` starts from a Hugging Face directory, whose
    config gives the architecture (``size``, when named, must agree with it).

    ``init_device="meta"`` allocates no parameters (FSDP materialises them, see ``meta_init``). A
    ``pretrained`` model is read into host memory on every rank, except with ``mixed``, where only
    rank 0 reads it and FSDP sends its weights to the others. ``pad_heads`` zero-pads attention heads
    to a multiple of 8 so that fused attention runs them, computing exactly the same (``head_padding``).
    """
    from transformers import LlamaForCausalLM

    from maxtoki.model.head_padding import PADDED, apply_unpadded_rotary, pad_heads as pad, padded_head_dim
    from maxtoki.model.meta_init import attach_param_init_fn, build_on, device_of_this_rank

    if not Path(vocab).exists():
        raise MaxtokiError(f"model.vocab {vocab}: no such file; give the vocabulary the data was made with")
    vocabulary = Vocabulary.load(vocab)
    special = dict(pad_token_id=vocabulary.pad_id, bos_token_id=vocabulary.bos_id, eos_token_id=vocabulary.eos_id)
    if pretrained:
        check_pretrained_vocabulary(pretrained, vocabulary, vocab)
        config = pretrained_config(pretrained, size, len(vocabulary), max_seq_len, rope_scaling, config_overrides)
    elif size is None:
        raise MaxtokiError("model.size is not set; name a size (tiny, 217m, 1b, ...) or give model.pretrained")
    else:
        config = llama_config(size, len(vocabulary), max_position_embeddings=max_seq_len, rope_scaling=rope_scaling,
                              **special, **(config_overrides or {}))
    padding = wants_padding(pad_heads, config)
    head_dim = padded_head_dim(config.head_dim) if padding else config.head_dim
    config._attn_implementation = resolve_attention(attn_implementation, head_dim)
    device = device_of_this_rank(init_device)
    if pretrained and (device == "cpu" or init_device == "meta"):
        model = LlamaForCausalLM.from_pretrained(pretrained, config=config)
    elif padding:  # built already padded (a rank that FSDP sends rank 0's padded weights to, or from scratch)
        config.head_dim, real = head_dim, config.head_dim
        setattr(config, PADDED, real)
        model = build_on(device, config)
        apply_unpadded_rotary(model)
    else:
        model = build_on(device, config)
    if padding and not getattr(model.config, PADDED, None):
        pad(model)
    attach_param_init_fn(model)
    config = model.config  # from_pretrained keeps a copy of the config it was given
    counts = count_parameters(config)
    logger.info(f"{size or 'pretrained'} model, {counts['total']:,} parameters ({counts['non_embedding']:,} without "
                f"embeddings), vocabulary {len(vocabulary):,} padded to {config.vocab_size:,}, context "
                f"{max_seq_len:,}, attention {config._attn_implementation}"
                + (f", heads padded {getattr(config, PADDED)} -> {config.head_dim}" if padding else ""))
    return model, vocabulary


SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


def pretrained_config(pretrained: str, size: str | None, vocab_size: int, max_seq_len: int,
                      rope_scaling: dict | None, overrides: dict | None):
    """The pretrained model's own config (its norms, RoPE base and shape are what its weights mean), with the
    recipe's context, RoPE scaling and overrides."""
    from transformers import LlamaConfig

    config = LlamaConfig.from_pretrained(pretrained)
    if size is not None:
        named = llama_config(size, vocab_size)
        differ = [f"{key} {getattr(named, key)} vs {getattr(config, key)}" for key in SHAPE_FIELDS
                  if getattr(named, key) != getattr(config, key)]
        if differ:
            raise MaxtokiError(f"model.size {size} does not match model.pretrained {pretrained} ({', '.join(differ)}); "
                               "set model.size to the pretrained model's size, or null to take it from the model")
    if config.vocab_size < vocab_size:
        raise MaxtokiError(f"model.pretrained {pretrained}: {config.vocab_size:,} embedding rows for a vocabulary of "
                           f"{vocab_size:,} tokens; import released weights with maxtoki import-hf first")
    config.max_position_embeddings = max_seq_len
    config.rope_scaling = dict(rope_scaling) if rope_scaling else None
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    return config


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
