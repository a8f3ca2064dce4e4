"""The TimeBetweenCells read-out (spec section 5): the softmax at ``<eoq>``, renormalized over the
numeric tokens, gives the expected timelapse and its arg-max, in the vocabulary's time tokens."""

from __future__ import annotations

import numpy as np

from maxtoki.vocab import Vocabulary


class TimelapseReadout:
    def __init__(self, vocab: Vocabulary, device="cpu"):
        import torch

        self.numeric_ids = torch.as_tensor(vocab.numeric_ids, device=device)
        self.values = torch.as_tensor(vocab.numeric_values[vocab.numeric_ids], dtype=torch.float64, device=device)

    def __call__(self, logits_at_eoq) -> tuple[np.ndarray, np.ndarray]:
        """Expected and arg-max timelapse of each row of ``logits_at_eoq`` (rows x vocabulary)."""
        import torch

        probabilities = torch.softmax(logits_at_eoq[:, self.numeric_ids].double(), dim=-1)
        return (probabilities @ self.values).cpu().numpy(), self.values[probabilities.argmax(dim=-1)].cpu().numpy()
