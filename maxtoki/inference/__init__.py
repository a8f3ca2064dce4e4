"""Inference on trained models: load one (``load_model``), then predict the time between cells, generate next
cells, embed cells, or share the model as a Hugging Face directory; the baselines that need no model.

None of these modules imports torch or transformers before a model is loaded, so ``import maxtoki.inference``
stays cheap. The functions are bound here, not looked up on first use: most share their module's name, and
Python would hand out the module once anything imported it.
"""

from maxtoki.inference.embed import EMBEDDING_KEY, embed, embed_tokens
from maxtoki.inference.export import export_hf
from maxtoki.inference.generate import Sampling, cells_to_anndata, generate, generate_cells
from maxtoki.inference.import_hf import import_hf
from maxtoki.inference.linear_baseline import linear_baseline
from maxtoki.inference.loading import load_model
from maxtoki.inference.naive_baseline import CellTimes, cell_kinds, naive_timelapses
from maxtoki.inference.predict_time import predict, predict_time

__all__ = [
    "EMBEDDING_KEY", "CellTimes", "Sampling", "cell_kinds", "cells_to_anndata", "embed", "embed_tokens", "export_hf",
    "generate", "generate_cells", "import_hf", "linear_baseline", "load_model", "naive_timelapses", "predict",
    "predict_time",
]
