"""Directories laid out exactly like the released MaxToki weights: a ``LlamaForCausalLM`` of 20,275 rows
(no time tokens, no ``<boq>``/``<eoq>``, untied embeddings, safetensors) with ``token_dictionary_v1.json``."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torch

from maxtoki.released import DICTIONARY_FILE, RELEASED_DIR

RELEASED_ROWS = 20_275


def released_config(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int | None = None,
                    intermediate: int | None = None, context: int = 4096):
    """The published config's fields (model_type llama, 20,275 rows, specials 0/2/3, untied), at any shape."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=RELEASED_ROWS, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                       max_position_embeddings=context, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                       tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10_000.0,
                       architectures=["LlamaForCausalLM"])


def write_dictionary(out: Path) -> Path:
    """The released ``token_dictionary_v1.json``, byte for byte, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / DICTIONARY_FILE).write_bytes(gzip.decompress((RELEASED_DIR / f"{DICTIONARY_FILE}.gz").read_bytes()))
    return out / DICTIONARY_FILE


def write_release(out: Path, config=None, dtype: torch.dtype = torch.float32, seed: int = 0, model=None) -> Path:
    """A random model of ``config`` (or ``model``, e.g. a trained stage-1 model truncated by ``as_release``) saved
    as the release is, with its dictionary beside it."""
    from transformers import LlamaForCausalLM

    if model is None:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config or released_config())
    shutil.rmtree(out, ignore_errors=True)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    write_dictionary(out)
    return out


def as_release(model):
    """A MaxToki stage-1 model cut to what the release has: the first 20,275 rows, no MaxToki settings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = {key: value for key, value in model.config.to_dict().items() if key != "maxtoki"}
    config = LlamaConfig.from_dict({**fields, "vocab_size": RELEASED_ROWS, "architectures": ["LlamaForCausalLM"]})
    released = LlamaForCausalLM(config)
    state = {key: (value[:RELEASED_ROWS] if key in ("model.embed_tokens.weight", "lm_head.weight") else value)
             for key, value in model.state_dict().items()}
    released.load_state_dict(state, strict=True)
    return released.eval()
