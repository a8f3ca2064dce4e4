"""Losses of both stages, computed from logits and the masks that the data itself defines.

Stage 1: next-token cross-entropy over every real (non-pad) token.
Stage 2: NextCell examples: cross-entropy on every response token (the first gene included);
TimeBetweenCells examples: at the ``<eoq>`` position, the softmax over the vocabulary is
renormalized over the numeric tokens and read out as an expected time E = sum(p_i * value_i);
the loss is ((E - Δ) / label_scalar)^2 + additive_penalty * P(non-numeric token), or, with
``timelapse_loss="cross_entropy"``, cross-entropy on the Δ token. The two task losses are per-token
means within the batch, mixed 50/50 (when the batch has both tasks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Labels aligned with logits: position t is scored on token t+1; padding and the last position ignored."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = torch.where(attention_mask[:, 1:].bool(), input_ids[:, 1:], IGNORE)
    return labels


def response_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: torch.Tensor) -> torch.Tensor:
    """Next-token labels restricted to the response: positions prompt_length-1 .. end-1."""
    labels = next_token_labels(input_ids, attention_mask)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
    return torch.where(positions >= (prompt_length[:, None] - 1), labels, IGNORE)


def numeric_readout(eoq_logits: torch.Tensor, numeric_ids: torch.Tensor, numeric_values: torch.Tensor):
    """Expected time (in time units) and the probability mass off the numeric tokens, per example."""
    log_probs = torch.log_softmax(eoq_logits.float(), dim=-1)
    numeric_log_probs = log_probs[:, numeric_ids]
    numeric_mass = numeric_log_probs.logsumexp(dim=-1).exp()
    within = torch.softmax(numeric_log_probs, dim=-1)
    expected = within @ numeric_values.to(within.dtype)
    return expected, 1.0 - numeric_mass


def eoq_logits(logits: torch.Tensor, prompt_length: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, prompt_length - 1]


def temporal_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  prompt_length: torch.Tensor, task: torch.Tensor, timelapse: torch.Tensor,
                  numeric_ids: torch.Tensor, numeric_values: torch.Tensor, label_scalar: float,
                  additive_penalty: float, timelapse_loss: str = "numeric") -> dict[str, torch.Tensor]:
    """The stage-2 loss and its parts (``next_cell`` and ``time_between_cells``, NaN-free)."""
    next_cell = task == 0
    parts = {}
    if next_cell.any():
        labels = response_labels(input_ids[next_cell], attention_mask[next_cell], prompt_length[next_cell])
        parts["next_cell"] = F.cross_entropy(logits[next_cell].flatten(0, 1).float(), labels.flatten(),
                                             ignore_index=IGNORE)
    if (~next_cell).any():
        at_eoq = eoq_logits(logits[~next_cell], prompt_length[~next_cell])
        if timelapse_loss == "cross_entropy":
            targets = input_ids[~next_cell].gather(1, prompt_length[~next_cell, None]).squeeze(1)
            parts["time_between_cells"] = F.cross_entropy(at_eoq.float(), targets)
        else:
            expected, off_numeric = numeric_readout(at_eoq, numeric_ids, numeric_values)
            error = (expected - timelapse[~next_cell].to(expected.dtype)) / label_scalar
            parts["time_between_cells"] = (error.square() + additive_penalty * off_numeric).mean()
    parts["total"] = torch.stack(list(parts.values())).mean()
    return parts
