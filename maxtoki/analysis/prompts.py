"""TimeBetweenCells prompts for the analyses: a context of cells from one donor at distinct times,
then ``<boq> query cell <eoq>``. The predicted time of the query is the last context time plus the
predicted timelapse (the paper's age-acceleration and perturbation set-up)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maxtoki.analysis.cells import AnalysisCells
from maxtoki.data.paragraphs.blueprint import TIME_BETWEEN_CELLS
from maxtoki.data.paragraphs.sampling import assemble, to_time_units
from maxtoki.errors import MaxtokiError


@dataclass(frozen=True)
class ContextOptions:
    donor_column: str
    match_columns: tuple[str, ...] = ()
    context_cells: int = 2
    time_scale: float = 1.0  # time column units -> time tokens (as in ``maxtoki data paragraphs``)


class ContextSampler:
    """Draws contexts for query cells from the allowed context cells: one donor other than the query's,
    ``context_cells`` cells at distinct times, all agreeing with the query on ``match_columns``."""

    def __init__(self, cells: AnalysisCells, allowed: np.ndarray, options: ContextOptions):
        if options.context_cells < 1:
            raise MaxtokiError("--context-cells must be at least 1")
        self.cells, self.options = cells, options
        obs = cells.obs
        self.donors = obs[options.donor_column].to_numpy()
        self.keys = _keys(obs, options.match_columns)
        self.times = to_time_units(obs["time"].to_numpy(dtype=float), options.time_scale)
        self.by_stratum: dict[tuple, dict[str, np.ndarray]] = {}
        for position in allowed:
            self.by_stratum.setdefault(self.keys[position], {}).setdefault(self.donors[position], [])
            self.by_stratum[self.keys[position]][self.donors[position]].append(position)
        for donors in self.by_stratum.values():
            for donor, positions in donors.items():
                donors[donor] = np.asarray(positions)

    def sample(self, query: int, rng: np.random.Generator, exclude_donors=()) -> np.ndarray | None:
        """Positions of the context cells in time order, or None when no donor can give a context."""
        donors = self.by_stratum.get(self.keys[query], {})
        excluded = {self.donors[query], *exclude_donors}
        eligible = [d for d, positions in donors.items()
                    if d not in excluded and len(np.unique(self.times[positions])) >= self.options.context_cells]
        if not eligible:
            return None
        positions = donors[eligible[rng.integers(len(eligible))]]
        times = np.unique(self.times[positions])
        chosen_times = np.sort(rng.choice(times, self.options.context_cells, replace=False))
        return np.array([rng.choice(positions[self.times[positions] == t]) for t in chosen_times])

    def prompt(self, context: np.ndarray, query_ids: np.ndarray, max_seq_len: int) -> tuple[np.ndarray, int]:
        """The prompt's tokens up to and including ``<boq>`` (the query and ``<eoq>`` follow), and the last
        context time in time tokens. One token is left free for a perturbed query that grows by a gene."""
        cells = [self.cells.input_ids[p] for p in context] + [query_ids]
        times = np.append(self.times[context], self.times[context[-1]])
        try:
            prompt, _, _ = assemble(cells, times, TIME_BETWEEN_CELLS, self.cells.vocab, max_seq_len - 1)
        except MaxtokiError as exc:
            hint = "give --time-scale as the training paragraphs were made with" if "has no token" in str(exc) \
                else f"the prompt exceeds the model's context ({max_seq_len}): lower --context-cells or " \
                "--model-input-size"
            raise MaxtokiError(f"{exc}; {hint}") from None
        return prompt[:len(prompt) - len(query_ids) - 1], int(self.times[context[-1]])


def _keys(obs, columns) -> list[tuple]:
    if not columns:
        return [()] * len(obs)
    return list(zip(*(obs[c].to_numpy() for c in columns)))
