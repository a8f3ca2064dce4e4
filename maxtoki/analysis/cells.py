"""The cells an analysis asks about: token arrays with their time and the obs columns it groups by.

From an ``.h5ad`` (rank-value-encoded here, with the model's vocabulary and the corpus medians the
training data used) or from cell shards (``maxtoki data tokenize``, with ``--time-column`` and the
columns kept by ``--group-columns``/``--keep-obs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from maxtoki.errors import MaxtokiError
from maxtoki.vocab import Vocabulary


@dataclass
class AnalysisCells:
    input_ids: list[np.ndarray]
    obs: pd.DataFrame  # one row per cell, indexed by cell id: "time" (float) and the requested columns (str)
    vocab: Vocabulary
    max_length: int  # the tokenization's cell length limit (an overexpressed gene pushes the last one out)

    def where(self, selections: tuple[tuple[str, str], ...]) -> np.ndarray:
        """Positions of the cells whose columns hold the given values (COLUMN, VALUE pairs)."""
        keep = np.ones(len(self.obs), dtype=bool)
        for column, value in selections:
            keep &= self.obs[column].to_numpy() == value
        return np.flatnonzero(keep)


def load_cells(data: str, columns: list[str], *, time_column: str | None, vocab: Vocabulary | None = None,
               medians: str | None = None, model_input_size: int = 4096, gene_id_column: str | None = None,
               allow_non_integer: bool = False) -> AnalysisCells:
    """Read and check the cells; ``columns`` must exist (in obs or in the shards), and the time column unless
    ``time_column`` is None (an analysis that reads no time; "time" is then NaN)."""
    columns = list(dict.fromkeys(c for c in columns if c))
    if str(data).endswith(".h5ad"):
        return _from_anndata(data, columns, time_column, vocab, medians, model_input_size, gene_id_column,
                             allow_non_integer)
    return _from_shards(data, columns, time_column is not None)


def _from_anndata(path, columns, time_column, vocab, medians, model_input_size, gene_id_column, allow_non_integer):
    import anndata as ad

    from maxtoki.data.cells.tokenize import tokenize_anndata

    if vocab is None or not medians:
        raise MaxtokiError(f"{path}: an .h5ad is tokenized first; give --medians (and --vocab unless the "
                           "checkpoint is an export-hf directory)")
    if not Path(path).exists():
        raise MaxtokiError(f"{path}: no such file")
    adata = ad.read_h5ad(path)
    missing = [c for c in [time_column, *columns] if c and c not in adata.obs.columns]
    if missing:
        raise MaxtokiError(f"{path}: obs has no column {missing[0]!r}; its columns are: "
                           f"{', '.join(map(str, adata.obs.columns))}")
    tokenized = tokenize_anndata(adata, vocab, medians, gene_id_column=gene_id_column, time_column=time_column,
                                 keep_obs=[c for c in columns if c != time_column],
                                 model_input_size=model_input_size, allow_non_integer=allow_non_integer)
    if not len(tokenized):
        raise MaxtokiError(f"{path}: no cell could be tokenized ({tokenized.dropped})")
    if time_column is None:
        tokenized.obs["time"] = np.nan
    obs = tokenized.obs[["time", *[c for c in columns if c != time_column]]].copy()
    if time_column and time_column in columns:
        obs[time_column] = obs["time"].astype(str)
    return AnalysisCells(tokenized.input_ids, obs, vocab, model_input_size)


def _from_shards(location, columns, needs_time: bool = True):
    from maxtoki.data.paragraphs.cell_store import CellStore

    store = CellStore(location)
    if store.manifest.get("kind") != "maxtoki.cells":
        raise MaxtokiError(f"{location}: give cell shards (maxtoki data tokenize) or an .h5ad")
    missing = [c for c in ["time" if needs_time else None, *columns] if c and c not in store.columns]
    if missing:
        hint = "tokenize with --time-column" if missing[0] == "time" else "keep it with --keep-obs when tokenizing"
        raise MaxtokiError(f"{location}: the shards have no column {missing[0]!r} ({hint}); their columns are: "
                           f"{', '.join(store.columns)}")
    samples = list(store)
    obs = pd.DataFrame({"time": [float(s.get("time", np.nan)) for s in samples],
                        **{c: [str(s[c]) for s in samples] for c in columns}},
                       index=pd.Index([str(s["cell_id"]) for s in samples], name="cell_id"))
    limit = int(store.manifest.get("arguments", {}).get("model_input_size", max(len(s["input_ids"]) for s in samples)))
    return AnalysisCells([np.asarray(s["input_ids"]) for s in samples], obs, store.vocabulary(), limit)
