"""Embedding rows for the tokens released stage-1 weights do not have: time tokens, ``<boq>``, ``<eoq>``.

Stage 2 has to learn them, so how they start decides how fast it does (benchmarks/README.md,
"Stage 2 from released weights"):

- ``mean`` (default): input rows are drawn from a normal with the mean and covariance of the
  released gene rows, so each new token is distinct and looks to the first layer like a token it
  knows; output rows are all the released rows' mean, so at first every time is equally likely and
  a time token as likely as an average gene (the expected Δ starts in the middle, not at a random
  token).
- ``random``: N(0, ``initializer_range``), how Hugging Face initialises new rows, and what the
  untrained rows of the BioNeMo copies hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

INIT_METHODS = ("mean", "random")


def new_rows(kept: torch.Tensor, count: int, method: str, output_layer: bool, std: float,
             generator: torch.Generator) -> torch.Tensor:
    """``count`` rows to append to ``kept`` (the released rows of one embedding matrix), in its dtype."""
    import torch

    if method not in INIT_METHODS:
        raise ValueError(f"method must be one of {INIT_METHODS}")
    width = kept.shape[1]
    if method == "random":
        return (torch.randn(count, width, generator=generator, dtype=torch.float64) * std).to(kept.dtype)
    rows = kept[4:].double()  # the genes: the four specials are not what a time token should look like
    mean = rows.mean(dim=0)
    if output_layer:
        return mean.expand(count, width).to(kept.dtype).clone()
    centred = rows - mean
    covariance = centred.T @ centred / max(len(rows) - 1, 1)
    jitter = 1e-6 * covariance.diagonal().mean().clamp_min(1e-12)
    factor = torch.linalg.cholesky(covariance + jitter * torch.eye(width, dtype=torch.float64))
    noise = torch.randn(count, width, generator=generator, dtype=torch.float64)
    return (mean + noise @ factor.T).to(kept.dtype)
