"""The TimeBetweenCells read-out scale taken from the data: ``model.label_scalar: auto`` and
``model.time_smoothing: auto`` in a stage-2 recipe.

``label_scalar`` divides the expected time's error in the loss. Far above the typical |Δ| (200, the
paper's value for months, on a time course measured in hours) every prediction costs about the same
and the model settles on the mean: it predicts a constant. ``auto`` is the standard deviation of the
distinct time points of the training paragraphs, about the typical |Δ|, as ``maxtoki pipeline`` sets
it; ``time_smoothing: auto`` is half of that (without smoothing, held-out predictions came out
compressed to half the true range). Both are read from the paragraphs' ``blueprint.npz``, one small
file beside the shards, local or on S3.
"""

from __future__ import annotations

import io
import logging

import numpy as np

from maxtoki.errors import MaxtokiError

logger = logging.getLogger(__name__)

AUTO = "auto"


def read_out_scale(times) -> float:
    """About the typical |Δ|: the standard deviation of the distinct time points (at least 1 time unit)."""
    return float(max(np.std(np.unique(np.asarray(times, dtype=np.float64))), 1.0))


def paragraph_time_points(data: str) -> np.ndarray:
    """The distinct times of the cells in a paragraph data set (directory or s3:// URI)."""
    from pathlib import Path

    from maxtoki import storage
    from maxtoki.data.paragraphs.blueprint import Blueprint
    from maxtoki.data.paragraphs.build import BLUEPRINT_NAME

    location = f"{data.rstrip('/')}/{BLUEPRINT_NAME}"
    try:
        source = io.BytesIO(storage.download_bytes(location)) if storage.is_remote(data) else Path(location)
        return np.unique(Blueprint.load(source).times)
    except (FileNotFoundError, MaxtokiError) as exc:
        raise MaxtokiError(f"{location}: cannot read the paragraphs' time points for model.label_scalar auto "
                           f"({exc}); rebuild the paragraphs with `maxtoki data paragraphs`, or give "
                           "model.label_scalar a number (about the typical time between cells)") from None


def resolve_read_out_scale(cfg) -> None:
    """Replaces ``auto`` in ``cfg.model.label_scalar`` and ``cfg.model.time_smoothing`` by numbers from the training
    paragraphs (``train_loader.dataset.remote``), and says which."""
    model = cfg.get("model") or {}
    if str(model.get("label_scalar")) == AUTO:
        data = str(cfg["train_loader"]["dataset"]["remote"])
        times = paragraph_time_points(data)
        model["label_scalar"] = read_out_scale(times)
        logger.info(f"model.label_scalar auto: {model['label_scalar']:.4g}, the spread of the {len(times)} time "
                    f"points of {data}")
    if str(model.get("time_smoothing")) == AUTO:
        model["time_smoothing"] = float(model["label_scalar"]) / 2
        logger.info(f"model.time_smoothing auto: {model['time_smoothing']:.4g}, half of model.label_scalar")
    for key in ("label_scalar", "time_smoothing"):
        try:
            float(model.get(key, 0.0))
        except (TypeError, ValueError):
            raise MaxtokiError(f"model.{key} {model[key]!r}: give a number (time units) or auto") from None
