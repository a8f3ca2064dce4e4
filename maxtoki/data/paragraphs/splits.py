"""Splits that do not leak: whole groups (donors) go to one split each; held-out cells go apart."""

from __future__ import annotations

import math

import numpy as np

from maxtoki.errors import MaxtokiError

HOLDOUT = "holdout"
VALIDATION = "validation"  # cells dealt apart by --validation-fraction


def parse_split(text: str) -> dict[str, float]:
    """``train=0.8,val=0.1,test=0.1`` -> {"train": 0.8, ...}; fractions must sum to 1."""
    fractions = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            fractions[name.strip()] = float(value)
        except ValueError:
            raise MaxtokiError(f"--split {text!r}: write it as name=fraction,... e.g. train=0.8,val=0.1,test=0.1")\
                from None
    if any(not name or name == HOLDOUT or f < 0 for name, f in fractions.items()):
        raise MaxtokiError(f"--split {text!r}: names must be non-empty (not {HOLDOUT!r}), fractions non-negative")
    if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-6):
        raise MaxtokiError(f"--split {text!r}: the fractions sum to {sum(fractions.values()):g}, not 1")
    return fractions


def parse_holdout_values(items) -> list[tuple[str, str]]:
    """``["cell_type=T cell", ...]`` -> [("cell_type", "T cell"), ...]."""
    pairs = []
    for item in items:
        column, sep, value = item.partition("=")
        if not sep or not column:
            raise MaxtokiError(f"{item!r}: write COLUMN=VALUE")
        pairs.append((column, value))
    return pairs


def assign_groups(group_names: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[str]]:
    """Shuffle the groups (seeded) and deal them out by fraction of groups, largest remainders first."""
    positive = {name: f for name, f in fractions.items() if f > 0}
    if len(group_names) < len(positive):
        raise MaxtokiError(f"{len(group_names)} group(s) cannot fill {len(positive)} splits with whole groups: "
                           "splits are by group (donor), so no cell of a group leaks into another split. "
                           "Tokenize with --group-columns for finer groups, or drop --split")
    order = np.random.default_rng(seed).permutation(len(group_names))
    raw = {name: len(group_names) * f for name, f in positive.items()}
    counts = {name: max(1, math.floor(v)) for name, v in raw.items()}
    while sum(counts.values()) > len(group_names):  # the max(1, ...) may overshoot with tiny fractions
        largest = max(counts, key=counts.get)
        counts[largest] -= 1
    for name in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True):
        if sum(counts.values()) == len(group_names):
            break
        counts[name] += 1
    assignment, start = {}, 0
    for name in fractions:
        count = counts.get(name, 0)
        assignment[name] = sorted(group_names[i] for i in order[start:start + count])
        start += count
    return assignment


def examples_per_split(num_examples: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``num_examples`` in proportion to the weights (largest remainders get the rest)."""
    total = sum(weights.values())
    raw = {name: num_examples * w / total for name, w in weights.items()}
    sizes = {name: math.floor(v) for name, v in raw.items()}
    for name in sorted(raw, key=lambda k: raw[k] - sizes[k], reverse=True)[:num_examples - sum(sizes.values())]:
        sizes[name] += 1
    return {name: max(1, n) for name, n in sizes.items()}
