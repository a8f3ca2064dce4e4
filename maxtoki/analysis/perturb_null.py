"""Is a gene's shift more than perturbing any gene at that rank would give? Random genes of the same cells,
matched on rank, are the null.

Perturbing any gene moves a cell's read-out, and how far depends mostly on where the gene sits: deleting the
top gene of a causal model's rank list changes every later position, deleting the last changes one. So every
query cell also gets ``count`` null perturbations per mode and combination size: random genes outside the
screened panel, spread evenly over the cell's ranks (for overexpression, also genes the cell does not
express, as a panel gene may be absent). A screened gene's shift in a cell is compared with the shifts of the
``per_match`` null perturbations of that cell nearest to it in rank; its p-value is the Mann-Whitney test of
its shifts over all cells against those matched null shifts, and the FDR is Benjamini-Hochberg over the genes
of one mode.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ABSENT_SHARE = 4  # one absent null per this many expressed ones (overexpression only), at least 2


def null_items(cell: np.ndarray, size: int, count: int, excluded: np.ndarray, absent_pool: np.ndarray,
               with_absent: bool, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``count`` random sets of ``size`` genes of the cell outside ``excluded``, one per equal stretch of its
    ranks (each set the genes nearest a random rank in the stretch), and with ``with_absent`` sets of genes
    from ``absent_pool`` the cell does not express."""
    inner = np.asarray(cell[1:-1], dtype=np.int64)
    positions = np.flatnonzero(~np.isin(inner, excluded))
    items = []
    if len(positions) >= size:
        for stretch in np.array_split(np.arange(len(positions)), min(count, len(positions))):
            centre = positions[rng.choice(stretch)]
            nearest = positions[np.argsort(np.abs(positions - centre), kind="stable")[:size]]
            items.append(tuple(int(g) for g in inner[np.sort(nearest)]))
    if with_absent:
        pool = absent_pool[~np.isin(absent_pool, inner) & ~np.isin(absent_pool, excluded)]
        for _ in range(max(2, count // ABSENT_SHARE) if len(pool) >= size else 0):
            items.append(tuple(int(g) for g in rng.choice(pool, size, replace=False)))
    return items


def matched_null_shifts(shifts: pd.DataFrame, nulls: pd.DataFrame, column: str, per_match: int = 2) -> dict:
    """(mode, gene) -> the null shifts matched to that gene's shifts: in every cell it was perturbed in, the
    ``per_match`` null perturbations of the same mode and size nearest to its rank."""
    by_cell = {key: (group["rank"].to_numpy(), group[column].to_numpy())
               for key, group in nulls.groupby(["cell_id", "mode", "size"], sort=False)}
    matched: dict = {}
    for row in shifts[["cell_id", "mode", "size", "rank", "gene"]].itertuples(index=False):
        ranks, values = by_cell.get((row.cell_id, row.mode, row.size), (np.empty(0), np.empty(0)))
        nearest = np.argsort(np.abs(ranks - row.rank), kind="stable")[:per_match]
        matched.setdefault((row.mode, row.gene), []).extend(values[nearest].tolist())
    return matched


def p_values(shifts: pd.DataFrame, nulls: pd.DataFrame, column: str, alternative: str) -> pd.DataFrame:
    """Per (mode, gene): p-value of its ``column`` against its rank-matched nulls and the FDR within the mode."""
    from scipy.stats import mannwhitneyu

    matched = matched_null_shifts(shifts, nulls, column)
    rows = []
    for (mode, gene), values in shifts.groupby(["mode", "gene"], sort=False)[column]:
        null = np.asarray(matched.get((mode, gene), []), dtype=float)
        p = mannwhitneyu(values.to_numpy(), null, alternative=alternative).pvalue if len(null) else np.nan
        rows.append({"mode": mode, "gene": gene, "null_mean_shift": null.mean() if len(null) else np.nan,
                     "p_value": float(p)})
    table = pd.DataFrame(rows)
    table["fdr"] = table.groupby("mode")["p_value"].transform(benjamini_hochberg)
    return table


def benjamini_hochberg(p: pd.Series) -> pd.Series:
    """Benjamini-Hochberg adjusted p-values (NaN stays NaN)."""
    values = p.to_numpy(dtype=float)
    known = np.flatnonzero(~np.isnan(values))
    adjusted = np.full(len(values), np.nan)
    if len(known):
        order = known[np.argsort(values[known])]
        scaled = values[order] * len(known) / np.arange(1, len(known) + 1)
        adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return pd.Series(adjusted, index=p.index)
