"""Attention heads zero-padded to a size fused kernels accept, computing exactly what the model computed.

The released 217M has 8 heads of 154. Flash-attention and the fused SDPA kernels need a head size
that is a multiple of 8, so the reference falls back to unfused attention, which needs about 33 GB
per layer at stage 2's 16,384 tokens. Padding every head to 160 changes nothing the model computes
when

- the zeros sit at the end of each half of the head, because rotary embeddings turn dimension i
  together with i + d/2 (so the 77 + 77 real dimensions keep their partners),
- the rotary frequencies are those of a 154-wide head (the pads get frequency 0: they rotate zeros),
- and the softmax scale stays 1/sqrt(154).

The zero rows of ``q_proj``/``k_proj``/``v_proj`` and the zero columns of ``o_proj`` get zero
gradients (each meets only zeros), so AdamW never moves them and training keeps them zero; a
padded model is unpadded exactly when it is loaded for inference or export. The config records
both sizes: ``head_dim`` (padded) and ``unpadded_head_dim``.
"""

from __future__ import annotations

import copy

import torch

PADDED = "unpadded_head_dim"


def padded_head_dim(head_dim: int, multiple: int = 8) -> int:
    return -(-head_dim // multiple) * multiple


def needs_padding(config, multiple: int = 8) -> bool:
    return _head_dim(config) % multiple != 0


def pad_heads(model, multiple: int = 8) -> None:
    """Pad every attention head of ``model`` (a ``LlamaForCausalLM``) to a multiple of ``multiple``, in place."""
    config = model.config
    if getattr(config, PADDED, None):
        return
    real = _head_dim(config)
    if real % 2:
        raise ValueError(f"head size {real} is odd; rotary embeddings need an even one")
    wide = padded_head_dim(real, multiple)
    if wide == real:
        return
    _reshape_projections(model, real, wide, _widen)
    config.head_dim = wide
    setattr(config, PADDED, real)
    apply_unpadded_rotary(model)


def unpad_heads(model) -> None:
    """Undo ``pad_heads`` in place: the model of the unpadded size, its padding dropped."""
    config = model.config
    real = getattr(config, PADDED, None)
    if not real:
        return
    wide = config.head_dim
    _reshape_projections(model, real, wide, _narrow)
    for layer in model.model.layers:
        layer.self_attn.head_dim, layer.self_attn.scaling = real, real ** -0.5
    config.head_dim = real
    delattr(config, PADDED)
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    device = model.model.rotary_emb.inv_freq.device
    model.model.rotary_emb = LlamaRotaryEmbedding(config, device=device)


def apply_unpadded_rotary(model) -> None:
    """A padded model's attention scale and rotary frequencies as those of its unpadded head size (also for a
    model built from a padded config, e.g. one loaded from a checkpoint of a padded run)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = model.config
    real = getattr(config, PADDED, None)
    if not real:
        return
    for layer in model.model.layers:
        layer.self_attn.head_dim, layer.self_attn.scaling = config.head_dim, real ** -0.5
    rotary = model.model.rotary_emb
    narrow = copy.deepcopy(config)
    narrow.head_dim = real
    inv_freq, _ = ROPE_INIT_FUNCTIONS[rotary.rope_type](narrow, rotary.inv_freq.device)
    padded = torch.zeros(config.head_dim // 2, dtype=inv_freq.dtype, device=inv_freq.device)
    padded[:real // 2] = inv_freq
    rotary.register_buffer("inv_freq", padded, persistent=False)
    rotary.original_inv_freq = padded


def zero_padding_of(model, module: torch.nn.Module) -> None:
    """Zero the padding of ``module`` if it is an attention projection of a padded model (after FSDP's module
    by module initialisation of a meta-built model drew it at random)."""
    config = model.config
    real = getattr(config, PADDED, None)
    if not real:
        return
    half, wide_half = real // 2, config.head_dim // 2
    for layer in model.model.layers:
        attention = layer.self_attn
        projections = {attention.q_proj: (config.num_attention_heads, 0),
                       attention.k_proj: (config.num_key_value_heads, 0),
                       attention.v_proj: (config.num_key_value_heads, 0), attention.o_proj: (config.num_attention_heads, 1)}
        if module in projections:
            heads, dim = projections[module]
            with torch.no_grad():
                if dim == 0:
                    module.weight.data.view(heads, 2, wide_half, -1)[:, :, half:] = 0
                else:
                    module.weight.data.view(-1, heads, 2, wide_half)[..., half:] = 0
                if module.bias is not None and dim == 0:
                    module.bias.data.view(heads, 2, wide_half)[:, :, half:] = 0
            return


def padding_parameters(config) -> int:
    """How many parameters are padding (always zero): not counted in FLOPs."""
    real = getattr(config, PADDED, None)
    if not real:
        return 0
    extra = config.head_dim - real
    per_layer = extra * config.hidden_size * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    return per_layer * config.num_hidden_layers


def _reshape_projections(model, real: int, wide: int, reshape) -> None:
    """Every layer's q/k/v rows and o columns, head by head, through ``reshape`` (``_widen`` or ``_narrow``)."""
    config = model.config
    for layer in model.model.layers:
        attention = layer.self_attn
        for name, heads in (("q_proj", config.num_attention_heads), ("k_proj", config.num_key_value_heads),
                            ("v_proj", config.num_key_value_heads)):
            linear = getattr(attention, name)
            setattr(attention, name, _linear(reshape(linear.weight.data, heads, real, wide, 0),
                                             None if linear.bias is None else
                                             reshape(linear.bias.data, heads, real, wide, 0)))
        out = attention.o_proj
        attention.o_proj = _linear(reshape(out.weight.data, config.num_attention_heads, real, wide, 1),
                                   None if out.bias is None else out.bias.data)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = torch.nn.Parameter(weight.contiguous())
    if bias is not None:
        linear.bias = torch.nn.Parameter(bias.contiguous())
    return linear


def _widen(tensor: torch.Tensor, heads: int, real: int, wide: int, dim: int) -> torch.Tensor:
    """Heads of ``real`` along ``dim`` -> heads of ``wide``: each half of a head keeps its place, zeros after it."""
    moved = tensor.movedim(dim, 0)
    parts = moved.reshape(heads, 2, real // 2, *moved.shape[1:])
    out = moved.new_zeros(heads, 2, wide // 2, *moved.shape[1:])
    out[:, :, :real // 2] = parts
    return out.reshape(heads * wide, *moved.shape[1:]).movedim(0, dim)


def _narrow(tensor: torch.Tensor, heads: int, real: int, wide: int, dim: int) -> torch.Tensor:
    moved = tensor.movedim(dim, 0)
    parts = moved.reshape(heads, 2, wide // 2, *moved.shape[1:])[:, :, :real // 2]
    return parts.reshape(heads * real, *moved.shape[1:]).movedim(0, dim)
