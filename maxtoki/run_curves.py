"""Loss curves of a finished (or running) training run, from its wandb run directory.

Training logs through wandb; offline (``WANDB_MODE=offline``, the default of ``scripts/train.py``)
each run is a directory ``wandb/offline-run-*`` whose ``run-*.wandb`` file holds every logged value.
This reads that file with wandb's own record reader, so it works without network or an account.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from maxtoki.errors import MaxtokiError


def find_run_file(run: str | Path) -> Path:
    """``run-*.wandb`` of a run directory, a ``wandb/`` directory (its latest run) or the file itself."""
    run = Path(run)
    if run.is_file() and run.suffix == ".wandb":
        return run
    for folder in (run, run / "latest-run", run / "wandb" / "latest-run"):
        found = sorted(folder.glob("run-*.wandb")) if folder.is_dir() else []
        if found:
            return found[-1]
    raise MaxtokiError(f"{run}: no wandb run here; give a wandb/offline-run-* directory (or the wandb/ folder)")


def read_run(run: str | Path) -> tuple[list[dict], dict]:
    """The logged rows (one dict per step, numbers only) and the run's config."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    path = find_run_file(run)
    if path.stat().st_size < datastore.LEVELDBLOG_HEADER_LEN:
        raise MaxtokiError(f"{path}: the run file is empty; wandb has not written this run yet (try again when "
                           "the run has started, or has finished)")
    store = datastore.DataStore()
    store.open_for_scan(str(path))
    rows, config = [], {}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in record.history.item:
                value = json.loads(item.value_json)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    row[item.key or "/".join(item.nested_key)] = float(value)
            rows.append(row)
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return rows, config


def plot_run(run: str | Path, out: str | Path) -> Path:
    """One panel of training losses and one per evaluation metric, against the batch; and the numbers
    as CSV beside the picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    rows, _ = read_run(run)
    table = pd.DataFrame(rows)
    if table.empty or "time/batch" not in table:
        raise MaxtokiError(f"{run}: the run has logged no training steps yet")
    table = table.groupby("time/batch", as_index=False).last().sort_values("time/batch")
    losses = sorted(c for c in table if c.startswith("loss/train/"))
    evaluations = sorted(c for c in table if c.startswith("metrics/eval/"))
    panels = 1 + len(evaluations)
    columns = min(panels, 3)
    lines = math.ceil(panels / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines), squeeze=False)
    for name in losses:
        steps = table[["time/batch", name]].dropna()
        axes[0][0].plot(steps["time/batch"], steps[name], label=name.removeprefix("loss/train/"))
    axes[0][0].set_title("training loss")
    axes[0][0].legend(fontsize=8)
    for index, name in enumerate(evaluations, start=1):
        ax = axes[index // columns][index % columns]
        steps = table[["time/batch", name]].dropna()
        ax.plot(steps["time/batch"], steps[name], marker="o")
        ax.set_title(name.removeprefix("metrics/eval/"), fontsize=10)
    for index in range(panels, axes.size):
        axes[index // columns][index % columns].axis("off")
    for ax in axes.flat:
        ax.set_xlabel("batch")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    table[["time/batch", *losses, *evaluations]].to_csv(out.with_suffix(".csv"), index=False)
    return out
