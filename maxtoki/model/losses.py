"""Losses of both stages, computed on the logits of the scored positions only.

Stage 1: next-token cross-entropy over every real (non-pad) token.
Stage 2: NextCell examples: cross-entropy on every response token (the first gene included);
TimeBetweenCells examples: at the ``<eoq>`` position, the softmax over the vocabulary is
renormalized over the numeric tokens and read out as an expected time E = sum(p_i * value_i);
the loss is ((E - Δ) / label_scalar)^2 + additive_penalty * P(non-numeric token) (the penalty moves
the time tokens' total mass, not their shape: ``numeric_mass_penalty``), or, with
``timelapse_loss="cross_entropy"``, cross-entropy on the Δ token. The two task losses are per-token
means within the batch, mixed 50/50 (when the batch has both tasks).

Only scored positions get logits (``Scored``): stage-2 contexts are long and mostly unscored, and the
output layer over the whole vocabulary is the largest single cost of a small model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass
class Scored:
    """The logits of the scored positions of a batch, in row-major order, and what they are scored on."""

    logits: torch.Tensor  # (N, vocabulary)
    labels: torch.Tensor  # (N,) the next token
    rows: torch.Tensor  # (N,) the batch row of each position
    readout: torch.Tensor  # (N,) True at a TimeBetweenCells <eoq>, read out as a time


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


def scored_labels(batch: dict, objective: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (IGNORE where unscored) and the TimeBetweenCells read-out positions, both (batch, length)."""
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    if objective == "pretrain":
        labels = next_token_labels(input_ids, attention_mask)
        if "sequence_id" in batch:  # packed rows: a cell's last token predicts nothing of the next cell
            sequence_id = batch["sequence_id"]
            labels[:, :-1].masked_fill_(sequence_id[:, 1:] != sequence_id[:, :-1], IGNORE)
        return labels, torch.zeros_like(input_ids, dtype=torch.bool)
    responses = response_labels(input_ids, attention_mask, batch["prompt_length"])
    readout = torch.zeros_like(input_ids, dtype=torch.bool)
    rows = torch.nonzero(batch["task"] != 0).squeeze(1)
    readout[rows, batch["prompt_length"][rows] - 1] = True
    labels = torch.where((batch["task"] == 0)[:, None] | readout, responses, IGNORE)
    return labels, readout


def gather_scored(logits: torch.Tensor, labels: torch.Tensor, readout: torch.Tensor) -> Scored:
    """``Scored`` from full (batch, length, vocabulary) logits; the model computes only these rows."""
    scored = labels != IGNORE
    return Scored(logits[scored], labels[scored], torch.nonzero(scored)[:, 0], readout[scored])


def numeric_readout(eoq_logits: torch.Tensor, numeric_ids: torch.Tensor, numeric_values: torch.Tensor):
    """Expected time (in time units) and the probability mass off the numeric tokens, per example."""
    expected, _, off_numeric = numeric_distribution(eoq_logits, numeric_ids, numeric_values)
    return expected, off_numeric


def numeric_distribution(eoq_logits: torch.Tensor, numeric_ids: torch.Tensor, numeric_values: torch.Tensor):
    """Expected time, the standard deviation of the distribution over time tokens (both in time units) and
    the probability mass off the numeric tokens, per example. A spread near 0 on every prompt is the mark
    of a collapsed read-out: the expected value then barely moves with the input, nor does its gradient."""
    log_probs = torch.log_softmax(eoq_logits.float(), dim=-1)
    numeric_log_probs = log_probs[:, numeric_ids]
    numeric_mass = numeric_log_probs.logsumexp(dim=-1).exp()
    within = torch.softmax(numeric_log_probs, dim=-1)
    values = numeric_values.to(within.dtype)
    expected = within @ values
    variance = within @ values.square() - expected.square()
    return expected, variance.clamp(min=0).sqrt(), 1.0 - numeric_mass


def numeric_mass_penalty(eoq_logits: torch.Tensor, numeric_ids: torch.Tensor) -> torch.Tensor:
    """P(non-numeric token) at ``<eoq>``, with a gradient that raises or lowers all time tokens together.

    Taken plainly, the gradient of P(non-numeric) on a time token's logit is proportional to that
    token's probability: the likeliest time tokens gain most, step after step, until one token holds
    all the mass. The distribution over times then has no spread, the expected value no gradient, and
    the read-out is stuck on a constant (measured: spread 0.8 h after 300 batches from a stage-1
    start). Here the penalty's value is unchanged but its gradient reaches the time tokens only
    through their mean logit, so it moves their total mass without reshaping the distribution.
    """
    logits = eoq_logits.float()
    numeric = logits[:, numeric_ids]
    mean = numeric.mean(dim=-1, keepdim=True)
    shifted = logits.index_copy(1, numeric_ids, numeric.detach() + (mean - mean.detach()))
    return 1.0 - torch.log_softmax(shifted, dim=-1)[:, numeric_ids].logsumexp(dim=-1).exp()


def soft_time_cross_entropy(eoq_logits: torch.Tensor, numeric_ids: torch.Tensor, numeric_values: torch.Tensor,
                            timelapse: torch.Tensor, width: float) -> torch.Tensor:
    """Cross-entropy of the distribution over time tokens against a Gaussian of standard deviation
    ``width`` (time units) centred on the true Δ, per example.

    The squared error of the expected value alone leaves the distribution's shape free; it stays
    broad, and the expected value of a broad distribution over the whole time range cannot move far
    from its middle: held-out predictions came out compressed to about half the true range. This
    term pulls mass to the neighbourhood of Δ (neighbouring times share it), so the distribution
    sharpens where the model can tell cells apart and stays a mixture where it cannot.
    """
    values = numeric_values.to(torch.float32)
    distance = (values[None, :] - timelapse.to(torch.float32)[:, None]) / width
    target = torch.softmax(-0.5 * distance.square(), dim=-1)
    log_within = torch.log_softmax(eoq_logits.float()[:, numeric_ids], dim=-1)
    return -(target * log_within).sum(dim=-1)


def temporal_loss(scored: Scored, timelapse: torch.Tensor, numeric_ids: torch.Tensor, numeric_values: torch.Tensor,
                  label_scalar: float, additive_penalty: float, timelapse_loss: str = "numeric",
                  time_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """The stage-2 loss and its parts (``next_cell`` and ``time_between_cells``, NaN-free).

    Both parts are always returned, 0 for a task the micro-batch lacks: Composer sums each part over
    micro-batches and all-reduces them by name across processes, so every rank must name the same parts.
    """
    parts = {}
    next_cell = ~scored.readout
    if next_cell.any():
        parts["next_cell"] = F.cross_entropy(scored.logits[next_cell].float(), scored.labels[next_cell])
    if scored.readout.any():
        at_eoq = scored.logits[scored.readout]
        if timelapse_loss == "cross_entropy":
            parts["time_between_cells"] = F.cross_entropy(at_eoq.float(), scored.labels[scored.readout])
        else:
            truth = timelapse[scored.rows[scored.readout]]
            expected, _ = numeric_readout(at_eoq, numeric_ids, numeric_values)
            error = (expected - truth.to(expected.dtype)) / label_scalar
            loss = error.square() + additive_penalty * numeric_mass_penalty(at_eoq, numeric_ids)
            if time_smoothing > 0:
                loss = loss + soft_time_cross_entropy(at_eoq, numeric_ids, numeric_values, truth, time_smoothing)
            parts["time_between_cells"] = loss.mean()
    total = torch.stack(list(parts.values())).mean()
    return {"next_cell": parts.get("next_cell", scored.logits.new_zeros(())),
            "time_between_cells": parts.get("time_between_cells", scored.logits.new_zeros(())), "total": total}
