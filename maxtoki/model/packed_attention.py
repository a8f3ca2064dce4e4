"""Attention within each cell of a packed row: what makes packed rows compute exactly what the same
cells compute alone.

flash-attention 2 takes the boundaries from ``position_ids`` (Hugging Face then calls its
variable-length kernel: no mask, no compute across cells); the other kernels take a block-causal
mask, each token seeing the earlier tokens of its own cell.
"""

from __future__ import annotations

import torch


def attention_inputs(model, batch: dict) -> dict:
    """The attention arguments of a Hugging Face forward over a batch, padded or packed."""
    if "sequence_id" not in batch:
        return {"attention_mask": batch["attention_mask"]}
    return packed_forward_inputs(model.config, batch["sequence_id"], batch["position_ids"], compute_dtype(model))


def packed_forward_inputs(config, sequence_id: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype) -> dict:
    """``attention_mask`` and ``position_ids`` for a Hugging Face forward over packed rows."""
    if config._attn_implementation == "flash_attention_2":
        return {"attention_mask": None, "position_ids": position_ids}
    return {"attention_mask": block_causal_mask(sequence_id, dtype), "position_ids": position_ids}


def block_causal_mask(sequence_id: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 1, length, length) additive mask: 0 where a token may attend, the lowest value elsewhere.
    Padding (``sequence_id`` -1) attends to itself only, so that no row of the mask is empty (an empty
    row is NaN in the softmax, and NaN times a zero weight is still NaN in later layers)."""
    length = sequence_id.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=sequence_id.device).tril()
    allowed = (sequence_id[:, :, None] == sequence_id[:, None, :]) & causal & (sequence_id[:, None, :] >= 0)
    allowed |= torch.eye(length, dtype=torch.bool, device=sequence_id.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=sequence_id.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def compute_dtype(model) -> torch.dtype:
    """The dtype attention runs in: autocast's where it is on, the weights' otherwise."""
    device = model.get_input_embeddings().weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return model.get_input_embeddings().weight.dtype


def cell_lengths(sequence_id: torch.Tensor) -> torch.Tensor:
    """Tokens of each packed cell (padding excluded), over the whole batch."""
    flat = (sequence_id + 1 + (sequence_id.max() + 2) * torch.arange(len(sequence_id),
                                                                     device=sequence_id.device)[:, None])
    counts = torch.bincount(flat[sequence_id >= 0].flatten())
    return counts[counts > 0]
