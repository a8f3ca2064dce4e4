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

from dataclasses import dataclass

import numpy as np


@dataclass
class CellPrefix:
    """A cell's tokens, its states at the reader's layer (tokens x hidden) and every layer's keys and values."""

    cell: np.ndarray
    states: object  # torch.Tensor
    layers: tuple


def first_difference(cell: np.ndarray, variant: np.ndarray) -> int:
    """The first position at which ``variant`` differs from ``cell``: at least 1 (every variant starts with the
    cell's <bos>), at most one less than the variant's length (so that each variant computes a position)."""
    length = min(len(cell), len(variant))
    unequal = np.flatnonzero(np.asarray(cell[:length]) != np.asarray(variant[:length]))
    first = int(unequal[0]) if len(unequal) else length
    return max(1, min(first, len(variant) - 1))


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

    def prefix(self, cell: np.ndarray) -> CellPrefix:
        """One cell's states at the chosen layer and its keys and values at every layer: what its variants share."""
        import torch

        with torch.no_grad():
            ids = torch.as_tensor(np.asarray(cell, dtype=np.int64), device=self.device)[None]
            output = self.model.model(input_ids=ids, use_cache=True, output_hidden_states=not self._last_layer)
            layers = output.past_key_values.to_legacy_cache()
            return CellPrefix(np.array(cell, dtype=np.int64), self._layer_of(output)[0], layers)

    def pooled_variants(self, prefix: CellPrefix, variants: list[np.ndarray],
                        left_out: list[tuple[int, ...]]) -> np.ndarray:
        """``pooled(variants, left_out)`` of variants of one cell, computing only what differs from the cell: a
        causal model's states before a variant's first changed position are the cell's, so each variant runs
        from there on, attending to the cell's cached keys and values (a deletion at rank r computes L - r
        positions, not L). The variants' remainders are packed, several to a row of the cell's length (no
        padding to speak of), ``batch_size`` rows per forward pass."""
        import torch

        from maxtoki.data.packing import first_fit_decreasing

        diverge = [first_difference(prefix.cell, v) for v in variants]
        suffixes = [np.asarray(v[d:], dtype=np.int64) for v, d in zip(variants, diverge)]
        lengths = [len(t) for t in suffixes]
        rows = first_fit_decreasing(lengths, range(len(variants)), max(len(prefix.cell), *lengths, 1))
        # sums in float32 whatever the model's dtype: a cell's mean is of hundreds to thousands of states
        sums = torch.zeros((len(variants), prefix.states.shape[1]), dtype=torch.float32, device=self.device)
        counts = torch.zeros(len(variants), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                self._add_packed(prefix, rows[start:start + self.batch_size], suffixes, diverge, left_out, sums,
                                 counts)
            self._add_shared(prefix, diverge, left_out, sums, counts)
        return (sums / counts.clamp(min=1)[:, None]).cpu().numpy()

    def _add_packed(self, prefix: CellPrefix, rows: list[list[int]], suffixes, diverge, left_out, sums, counts):
        """Run packed rows of variant remainders; add each remainder's kept gene-token states to its variant."""
        import torch
        from transformers import DynamicCache

        width = max(sum(len(suffixes[i]) for i in row) for row in rows)
        shared = max(diverge[i] for row in rows for i in row)
        ids = torch.full((len(rows), width), self.vocab.pad_id, dtype=torch.long)
        owner = torch.full((len(rows), width), -1, dtype=torch.long)  # the variant of each token; -1: padding
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = len(suffixes[i])
                ids[r, at:at + n], owner[r, at:at + n] = torch.as_tensor(suffixes[i]), i
                positions[r, at:at + n] = torch.arange(diverge[i], diverge[i] + n)
                at += n
        ids, owner, positions = ids.to(self.device), owner.to(self.device), positions.to(self.device)
        starts = torch.as_tensor(diverge, device=self.device)[owner.clamp(min=0)]  # its variant's first position
        # a token sees the cell before its variant's first changed position, and its own remainder causally
        sees_cell = torch.arange(shared, device=self.device)[None, None] < starts[:, :, None]
        causal = torch.ones((width, width), dtype=torch.bool, device=self.device).tril()[None]
        sees_own = causal & (owner[:, :, None] == owner[:, None, :]) & (owner[:, None, :] >= 0)
        allowed = torch.cat([sees_cell, sees_own], dim=2)
        dtype = prefix.states.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device).masked_fill(~allowed,
                                                                                       torch.finfo(dtype).min)
        cache = DynamicCache.from_legacy_cache(tuple(
            (k[:, :, :shared].expand(len(rows), -1, -1, -1), v[:, :, :shared].expand(len(rows), -1, -1, -1))
            for k, v in prefix.layers))
        states = self._layer_of(self.model.model(
            input_ids=ids, attention_mask=mask[:, None], position_ids=positions, past_key_values=cache,
            output_hidden_states=not self._last_layer,
            cache_position=torch.arange(shared, shared + width, device=self.device)))
        excluded = self._excluded(left_out)[owner.clamp(min=0)]  # each token's variant's perturbed genes
        keep = (owner >= 0) & self.is_gene[ids] & ~(ids[:, :, None] == excluded).any(-1)
        sums.index_add_(0, owner[keep], states[keep].float())
        counts.index_add_(0, owner[keep], torch.ones(int(keep.sum()), device=self.device))

    def _add_shared(self, prefix: CellPrefix, diverge, left_out, sums, counts):
        """Add to each variant the cell's kept gene-token states before its first changed position."""
        import torch

        cell = torch.as_tensor(prefix.cell, device=self.device)
        gene, states = self.is_gene[cell].float(), prefix.states.float()
        total = torch.cat([torch.zeros_like(states[:1]), (states * gene[:, None]).cumsum(0)])
        number = torch.cat([gene.new_zeros(1), gene.cumsum(0)])
        before = torch.as_tensor(diverge, device=self.device)
        sums += total[before]
        counts += number[before]
        # a perturbed gene that stayed before that position: in a combination, the top gene shifted up with another
        position = {int(g): p for p, g in enumerate(prefix.cell)}
        for i, genes in enumerate(left_out):
            for g in genes:
                p = position.get(int(g))
                if p is not None and p < diverge[i] and bool(gene[p]):
                    sums[i] -= states[p]
                    counts[i] -= 1

    def _excluded(self, left_out) -> object:
        """Perturbed genes of every variant as rows of a tensor (-1 where a variant has fewer)."""
        import torch

        widest = max((len(g) for g in left_out), default=0) or 1
        table = torch.full((len(left_out), widest), -1, dtype=torch.long)
        for i, genes in enumerate(left_out):
            table[i, :len(genes)] = torch.as_tensor(genes, dtype=torch.long)
        return table.to(self.device)

    @property
    def _last_layer(self) -> bool:
        return self.layer in (-1, self.model.config.num_hidden_layers)

    def _layer_of(self, output):
        """The reader's layer of a forward pass's output (the last without keeping the others)."""
        return output.last_hidden_state if self._last_layer else output.hidden_states[self.layer]

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
