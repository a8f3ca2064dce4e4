"""The embedding read-out of a perturbation (Geneformer's): how far a cell's embedding moves, and whether it
moves towards a goal state. Needs no time tokens, so it works on stage-1 models (the released weights).

A cell's embedding is the mean of one layer's hidden states over its gene tokens. The perturbed genes
themselves are left out of both means, the original's and the perturbed cell's: what is measured is how the
perturbation changes the model's reading of the *other* genes, not the trivial loss or gain of the perturbed
gene's own vector (which even an untrained model would show).

- cosine shift: 1 - cos(perturbed, original); 0 is no change.
- goal-state shift, with start and goal states (cells of one obs value each, e.g. age_group old -> young):
  [cos(perturbed, goal) - cos(original, goal)] - [cos(perturbed, start) - cos(original, start)], with the
  states' centroids (mean embedding of their cells); positive moves the cell towards the goal and away from
  its start state.
"""

from __future__ import annotations

import numpy as np


class EmbeddingReader:
    """Pooled embeddings of cells and of their perturbed variants, in batches of ``batch_size`` rows."""

    def __init__(self, model, vocab, layer: int = -1, batch_size: int = 64, device: str = "cpu"):
        import torch

        from maxtoki.inference.embed import check_layer

        check_layer(model, layer)
        self.model, self.vocab = model.to(device).eval(), vocab
        self.layer, self.batch_size, self.device = layer, batch_size, device
        self.is_gene = torch.as_tensor(vocab.is_gene, device=device)

    def pooled(self, cells: list[np.ndarray], left_out: list[tuple[int, ...]] | None = None) -> np.ndarray:
        """Mean state of each cell's gene tokens, leaving out the genes of ``left_out[i]`` (cells x hidden)."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(cells), self.batch_size):
                batch = [np.asarray(c, dtype=np.int64) for c in cells[start:start + self.batch_size]]
                ids, mask = self._padded(batch)
                states = self._states(ids, mask)
                keep = mask.bool() & self.is_gene[ids]
                if left_out is not None:
                    for row, genes in enumerate(left_out[start:start + self.batch_size]):
                        if genes:
                            keep[row] &= ~torch.isin(ids[row], torch.as_tensor(genes, device=self.device))
                weights = keep.to(states.dtype)
                sums = torch.einsum("rt,rth->rh", weights, states)
                out.append((sums / weights.sum(1, keepdim=True).clamp(min=1)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)

    def token_states(self, cell: np.ndarray) -> np.ndarray:
        """The chosen layer's state at every token of one cell (tokens x hidden)."""
        import torch

        with torch.no_grad():
            ids, mask = self._padded([np.asarray(cell, dtype=np.int64)])
            return self._states(ids, mask)[0].float().cpu().numpy()

    def _padded(self, batch):
        """Right padding (a causal model's real tokens never see it)."""
        from maxtoki.data.loaders import PadCollator

        padded = PadCollator(self.vocab.pad_id)([{"input_ids": cell} for cell in batch])
        return padded["input_ids"].to(self.device), padded["attention_mask"].to(self.device)

    def _states(self, ids, mask):
        from maxtoki.inference.embed import layer_states

        return layer_states(self.model, ids, {"attention_mask": mask}, self.layer)


def pooled_without(cell: np.ndarray, states: np.ndarray, is_gene: np.ndarray, genes: tuple[int, ...]) -> np.ndarray:
    """The original cell's embedding leaving out ``genes``, from its token states (computed once per cell)."""
    keep = is_gene[cell] & ~np.isin(cell, genes)
    return states[keep].mean(axis=0) if keep.any() else np.zeros(states.shape[1], dtype=states.dtype)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (b may be one vector)."""
    norm = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(norm, 1e-12)


def shifts(original: np.ndarray, perturbed: np.ndarray, start: np.ndarray | None = None,
           goal: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Cosine shift of each perturbed row from its original row, and the goal-state shift when the states'
    centroids are given."""
    result = {"cosine_shift": 1.0 - cosine(perturbed, original)}
    if goal is not None:
        towards_goal = cosine(perturbed, goal) - cosine(original, goal)
        towards_start = cosine(perturbed, start) - cosine(original, start)
        result["goal_shift"] = towards_goal - towards_start
    return result
