"""The backbone of a recipe's ``model:`` section: a ``LlamaForCausalLM`` of a named size."""

from __future__ import annotations

from pathlib import Path

from maxtoki.errors import MaxtokiError
from maxtoki.model.sizes import count_parameters, llama_config
from maxtoki.vocab import Vocabulary


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
                   config_overrides: dict | None = None):
    """A ``LlamaForCausalLM`` and its vocabulary; ``pretrained`` starts from a Hugging Face directory."""
    from transformers import LlamaForCausalLM

    if not Path(vocab).exists():
        raise MaxtokiError(f"model.vocab {vocab}: no such file; give the vocabulary the data was made with")
    vocabulary = Vocabulary.load(vocab)
    config = llama_config(size, len(vocabulary), max_position_embeddings=max_seq_len, pad_token_id=vocabulary.pad_id,
                          bos_token_id=vocabulary.bos_id, eos_token_id=vocabulary.eos_id,
                          rope_scaling=rope_scaling, **(config_overrides or {}))
    config._attn_implementation = resolve_attention(attn_implementation, config.head_dim)
    if pretrained:
        model = LlamaForCausalLM.from_pretrained(pretrained, config=config)
    else:
        model = LlamaForCausalLM(config)
    counts = count_parameters(config)
    print(f"maxtoki: {size} model, {counts['total']:,} parameters ({counts['non_embedding']:,} without embeddings), "
          f"vocabulary {len(vocabulary):,} padded to {config.vocab_size:,}, context {max_seq_len:,}, "
          f"attention {config._attn_implementation}", flush=True)
    return model, vocabulary
