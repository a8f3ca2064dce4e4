"""What a perturbation does to a cell's rank list (``<bos> genes by rank <eos>``), as Geneformer's users know
them: delete a gene, overexpress it (to the top), inhibit it (to the bottom), or shift it by k ranks; and the
same for a combination of up to three genes, applied together.

Every operation returns the changed cell, or None when it does not apply to that cell: a gene it does not
express cannot be deleted, inhibited or shifted (for a combination: unless it expresses all of them), and a
cell is unchanged when the gene already sits where the operation would put it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maxtoki.errors import MaxtokiError

MODES = ("delete", "overexpress", "inhibit", "shift")
MAX_COMBINATION = 3


@dataclass(frozen=True)
class Mode:
    """One kind of perturbation; ``ranks`` only for shift (positive: towards the top, more expressed)."""

    kind: str
    ranks: int = 0

    @property
    def label(self) -> str:
        return f"shift{self.ranks:+d}" if self.kind == "shift" else self.kind

    @property
    def needs_expression(self) -> bool:
        """Only overexpression can act on a gene the cell does not express (it adds it on top)."""
        return self.kind != "overexpress"


def modes_from(kinds, shift_ranks=(5,)) -> tuple[Mode, ...]:
    """The modes a screen runs: every kind once, shift once per number of ranks."""
    bad = [k for k in kinds if k not in MODES]
    if bad:
        raise MaxtokiError(f"unknown perturbation {bad[0]!r}; choose from {', '.join(MODES)}")
    if "shift" in kinds and (not shift_ranks or 0 in shift_ranks):
        raise MaxtokiError("--shift-ranks: give non-zero numbers of ranks (positive: towards the top)")
    modes = []
    for kind in dict.fromkeys(kinds):
        modes += [Mode(kind, int(k)) for k in dict.fromkeys(shift_ranks)] if kind == "shift" else [Mode(kind)]
    return tuple(modes)


def apply(cell: np.ndarray, genes, mode: Mode, max_length: int) -> np.ndarray | None:
    """The cell with every gene of ``genes`` (token ids, in order) perturbed by ``mode``, or None when that
    does not apply to it or changes nothing."""
    inner = np.asarray(cell[1:-1])
    expressed = np.isin(genes, inner)
    if mode.needs_expression and not expressed.all():
        return None
    if mode.kind == "delete":
        changed = inner[~np.isin(inner, genes)]
    elif mode.kind == "overexpress":
        changed = np.concatenate([genes, inner[~np.isin(inner, genes)]])[:max_length - 2]
    elif mode.kind == "inhibit":
        changed = np.concatenate([inner[~np.isin(inner, genes)], genes])
    else:
        changed = inner
        for gene in genes:
            changed = _shifted(changed, gene, mode.ranks)
    if len(changed) == len(inner) and np.array_equal(changed, inner):
        return None
    return np.concatenate([cell[:1], changed, cell[-1:]]).astype(cell.dtype)


def _shifted(genes: np.ndarray, gene: int, ranks: int) -> np.ndarray:
    """``gene`` moved ``ranks`` places towards the top (negative: towards the bottom), bounded by the list."""
    rest = genes[genes != gene]
    position = int(np.flatnonzero(genes == gene)[0])
    target = min(max(position - ranks, 0), len(rest))
    return np.insert(rest, target, gene)


def delete(cell: np.ndarray, gene: int) -> np.ndarray | None:
    """The cell without the gene, or None when the cell does not express it (nothing to delete)."""
    return apply(cell, [gene], Mode("delete"), len(cell))


def overexpress(cell: np.ndarray, gene: int, max_length: int) -> np.ndarray | None:
    """The gene moved to the top of the rank list (added when absent, pushing the last gene out of a cell
    at the length limit), or None when it already is the top gene."""
    return apply(cell, [gene], Mode("overexpress"), max_length)


def rank_in(cell: np.ndarray, genes) -> float:
    """Mean position (1 = top gene) of ``genes`` in the cell's rank list; an absent gene counts as just below
    the bottom. The null genes of a screen are matched to a gene on this."""
    inner = np.asarray(cell[1:-1])
    positions = [int(np.flatnonzero(inner == g)[0]) + 1 if (inner == g).any() else len(inner) + 1 for g in genes]
    return float(np.mean(positions))


def parse_items(texts, vocab) -> list[tuple[int, ...]]:
    """``GENE`` or ``GENE+GENE[+GENE]`` (a combination, perturbed together) -> token ids; unknown genes and
    combinations of more than three genes are refused."""
    items, unknown = [], []
    for text in texts:
        names = [n for n in str(text).split("+") if n]
        if not 1 <= len(names) <= MAX_COMBINATION or len(set(names)) != len(names):
            raise MaxtokiError(f"{text!r}: a combination joins 2 or 3 distinct genes with '+'")
        unknown += [n for n in names if n not in vocab or not vocab.is_gene[vocab[n]]]
        items.append(tuple(vocab[n] for n in names if n in vocab))
    if unknown:
        raise MaxtokiError(f"{len(unknown)} genes are not in the model's vocabulary (first: {unknown[0]}); "
                           "give Ensembl IDs as in the vocabulary")
    return list(dict.fromkeys(items))


def label(item: tuple[int, ...], vocab) -> str:
    return "+".join(vocab.token(g) for g in item)
