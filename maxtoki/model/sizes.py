"""Named model sizes -> Hugging Face ``LlamaConfig`` (the class of the released MaxToki weights).

``217m`` and ``1b`` are the published configurations. ``217m-flash`` has the same parameters as
``217m`` with 11 heads of 112 instead of 8 of 154: fused flash-attention kernels need a head size
that is a multiple of 8, so this variant runs attention fused on GPU at no cost in parameters.
"""

from __future__ import annotations

from typing import Any

from maxtoki.errors import MaxtokiError

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=10_000.0),
    "217m": dict(hidden_size=1232, intermediate_size=2464, num_hidden_layers=11, num_attention_heads=8,
                 num_key_value_heads=8, rms_norm_eps=1e-6, rope_theta=10_000.0),
    "217m-flash": dict(hidden_size=1232, intermediate_size=2464, num_hidden_layers=11, num_attention_heads=11,
                       num_key_value_heads=11, rms_norm_eps=1e-6, rope_theta=10_000.0),
    "1b": dict(hidden_size=2304, intermediate_size=4608, num_hidden_layers=20, num_attention_heads=16,
               num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500_000.0),
}
VOCAB_MULTIPLE = 128


def padded_vocab_size(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def llama_config(size: str, vocab_size: int, max_position_embeddings: int = 4096, pad_token_id: int = 0,
                 bos_token_id: int = 2, eos_token_id: int = 3, rope_scaling: dict | None = None,
                 attn_implementation: str = "sdpa", **overrides):
    """The ``LlamaConfig`` of a named size; ``overrides`` change any field (e.g. for experiments)."""
    from transformers import LlamaConfig

    if size not in SIZES:
        raise MaxtokiError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    fields = {**SIZES[size], **overrides}
    config = LlamaConfig(vocab_size=padded_vocab_size(vocab_size), max_position_embeddings=max_position_embeddings,
                         tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
                         pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         rope_scaling=dict(rope_scaling) if rope_scaling else None, **fields)
    config._attn_implementation = attn_implementation
    return config


def count_parameters(config) -> dict[str, int]:
    """Parameters of a config, counted on the meta device (no memory is allocated)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    return {"total": total, "non_embedding": total - embedding}
