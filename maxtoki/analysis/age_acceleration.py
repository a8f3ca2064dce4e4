"""Age acceleration of a condition (the paper's analysis): is a case cell read as older than an
age-matched control cell, under the same normal context?

Each pair shares one context of control cells (one donor, several times); its queries are a case cell
and a control cell of another donor with the same age (within a tolerance) and the same match
columns. The predicted age of a query is the last context time plus the predicted timelapse.

    acceleration = mean over pairs of (predicted - true age of the case) - (predicted - true age of the control)

Every regressor shrinks its predictions towards the mean (slope < 1 of predicted on true age among
the controls), which shrinks the acceleration by the same factor; ``calibrated`` divides by that
slope to give the shift in time units.

Control queries come from donors the model did not train on, when the training donors are known: a
cell the model has seen reads closer to its true age than an unseen one, and a case cell (unseen)
against a seen control would read as acceleration where there is none. Context cells may come from any
control donor: both queries of a pair share the context, so what the model remembers of a context
donor moves both predictions alike and cancels in the difference.

Confidence intervals come from a crossed ("pigeonhole", Owen 2007) bootstrap: a pair depends on its
case donor and on its control donor (cells of one donor are not independent), so each resample draws
the case donors and the control donors with replacement and weights every pair by the product of its
two donors' draw counts; the slope of the calibration is refitted on the same weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from maxtoki.analysis.cells import AnalysisCells
from maxtoki.analysis.prompts import ContextOptions, ContextSampler
from maxtoki.analysis.timelapse import SharedContextPredictor
from maxtoki.console import progress_bar
from maxtoki.errors import MaxtokiError
from maxtoki.inference.loading import untrained_time_warning


@dataclass(frozen=True)
class AccelerationOptions:
    condition_column: str
    case: str
    control: str
    age_tolerance: float = 0.0  # in time-column units
    pairs: int = 400
    bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0


def build_pairs(cells: AnalysisCells, context: ContextOptions, options: AccelerationOptions,
                trained: set[str] | None = None) -> pd.DataFrame:
    """Draw case cells, their age-matched control cells and a shared context for each pair. Control
    queries come from control donors outside ``trained`` (the donors the model trained on, when known);
    contexts from any control donor other than the two query donors."""
    obs = cells.obs
    condition = obs[options.condition_column].to_numpy()
    cases, controls = np.flatnonzero(condition == options.case), np.flatnonzero(condition == options.control)
    for name, found in ((options.case, cases), (options.control, controls)):
        if not len(found):
            raise MaxtokiError(f"no cell has {options.condition_column}={name}; the values are: "
                               f"{', '.join(sorted(map(str, set(condition))))}")
    sampler = ContextSampler(cells, controls, context)
    ages, donors = obs["time"].to_numpy(dtype=float), obs[context.donor_column].to_numpy()
    queries = _untrained(controls, donors, trained, options.control)
    match = [obs[c].to_numpy() for c in context.match_columns]
    rng = np.random.default_rng(options.seed)
    rows, misses = [], 0
    for case in rng.permutation(np.resize(cases, max(options.pairs, len(cases))))[:options.pairs]:
        candidates = queries[np.abs(ages[queries] - ages[case]) <= options.age_tolerance]
        for column in match:
            candidates = candidates[column[candidates] == column[case]]
        if not len(candidates):
            misses += 1
            continue
        control = int(candidates[rng.integers(len(candidates))])
        context_cells = sampler.sample(control, rng, exclude_donors=(donors[case],))
        if context_cells is None:
            misses += 1
            continue
        rows.append({"case": int(case), "control": control, "context": context_cells})
    if not rows:
        untrained = "" if trained is None else " of a donor the model did not train on"
        raise MaxtokiError(f"no case cell found an age-matched control{untrained} (±{options.age_tolerance}) and a "
                           f"control donor for the context ({misses} tried); widen --age-tolerance, check "
                           "--match-columns or lower --context-cells")
    return pd.DataFrame(rows)


def _untrained(controls: np.ndarray, donors: np.ndarray, trained: set[str] | None, control: str) -> np.ndarray:
    """The control cells whose donor the model did not train on (all of them when that is unknown)."""
    if trained is None:
        return controls
    keep = controls[~np.isin(donors[controls].astype(str), list(trained))]
    if not len(keep):
        raise MaxtokiError(f"all {len(set(donors[controls]))} {control} donors are in the training paragraphs "
                           "(--train-data): no untrained control donor is left to query; hold control donors out "
                           "of training (e.g. `maxtoki data paragraphs --split train=0.7,val=0.3`)")
    return keep


def predict_pairs(cells: AnalysisCells, pairs: pd.DataFrame, context: ContextOptions,
                  predictor: SharedContextPredictor, max_seq_len: int) -> pd.DataFrame:
    """One row per query (two per pair) with its true and predicted age in time-column units."""
    sampler = ContextSampler(cells, np.array([], dtype=int), context)
    obs = cells.obs
    rows = []
    with progress_bar(len(pairs), "age acceleration", unit="pairs") as bar:
        for pair, (case, control, context_cells) in enumerate(pairs[["case", "control", "context"]].itertuples(
                index=False)):
            queries = [cells.input_ids[case], cells.input_ids[control]]
            prefix, last_time = sampler.prompt(context_cells, max(queries, key=len), max_seq_len)
            deltas = predictor(prefix, queries)
            for role, position, delta in (("case", case, deltas[0]), ("control", control, deltas[1])):
                rows.append({"pair": pair, "role": role, "cell_id": obs.index[position],
                             "donor": obs[context.donor_column].iloc[position],
                             "context_donor": obs[context.donor_column].iloc[context_cells[0]],
                             "true_age": float(obs["time"].iloc[position]),
                             "predicted_age": (last_time + float(delta)) / context.time_scale})
            bar.update(1)
    table = pd.DataFrame(rows)
    table["residual"] = table["predicted_age"] - table["true_age"]
    return table


@dataclass
class PairArrays:
    """Per pair: the case and control residuals, the control's true and predicted age, and the two donors."""
    case_residual: np.ndarray
    control_residual: np.ndarray
    control_true: np.ndarray
    control_predicted: np.ndarray
    case_donor: np.ndarray
    control_donor: np.ndarray

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> PairArrays:
        case = table[table["role"] == "case"].set_index("pair").sort_index()
        control = table[table["role"] == "control"].set_index("pair").sort_index()
        return cls(case["residual"].to_numpy(), control["residual"].to_numpy(), control["true_age"].to_numpy(),
                   control["predicted_age"].to_numpy(), case["donor"].to_numpy(), control["donor"].to_numpy())


def estimate(pairs: PairArrays, weights: np.ndarray | None = None) -> dict[str, float]:
    """Raw and slope-calibrated acceleration, each pair counted ``weights`` times (default once)."""
    weights = np.ones(len(pairs.case_residual)) if weights is None else np.asarray(weights, dtype=float)
    total = weights.sum()
    if total <= 0:
        return {"acceleration": float("nan"), "slope": float("nan"), "calibrated": float("nan")}
    raw = float(weights @ (pairs.case_residual - pairs.control_residual) / total)
    true = pairs.control_true - weights @ pairs.control_true / total
    predicted = pairs.control_predicted - weights @ pairs.control_predicted / total
    spread = float(weights @ true ** 2)
    slope = float(weights @ (true * predicted)) / spread if spread > 0 else float("nan")
    return {"acceleration": raw, "slope": slope, "calibrated": raw / slope if slope > 0.05 else float("nan")}


def bootstrap(pairs: PairArrays, options: AccelerationOptions) -> dict[str, np.ndarray]:
    """Estimates over crossed resamples: case donors and control donors are drawn with replacement, each
    independently, and a pair counts as often as the product of its two donors' draws."""
    rng = np.random.default_rng(options.seed + 1)
    _, case_of = np.unique(pairs.case_donor, return_inverse=True)
    _, control_of = np.unique(pairs.control_donor, return_inverse=True)
    draws = {"acceleration": [], "calibrated": []}
    for _ in range(options.bootstrap):
        result = estimate(pairs, _draw_counts(case_of, rng) * _draw_counts(control_of, rng))
        for key in draws:
            draws[key].append(result[key])
    return {k: np.asarray(v) for k, v in draws.items()}


def _draw_counts(donor_of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per pair: how often its donor was drawn when as many donors as there are are drawn with replacement."""
    donors = int(donor_of.max()) + 1
    return np.bincount(rng.integers(donors, size=donors), minlength=donors)[donor_of]


def age_acceleration(model, cells: AnalysisCells, out: str | Path, context: ContextOptions,
                     options: AccelerationOptions, batch_size: int = 64, device: str = "cpu",
                     trained: set[str] | None = None, allow_untrained_time: bool = False) -> dict:
    """Write pairs.csv, acceleration.json and acceleration.png to ``out``; returns the summary.

    ``trained``: the donors the model trained on (``trained_donors``), None when unknown; control
    queries then come only from the other control donors. A model whose time tokens stage 2 never
    trained is refused unless ``allow_untrained_time``."""
    warning = untrained_time_warning(model, allow_untrained_time)
    pairs = build_pairs(cells, context, options, trained)
    predictor = SharedContextPredictor(model, cells.vocab, batch_size, device)
    table = predict_pairs(cells, pairs, context, predictor, model.config.max_position_embeddings)
    arrays = PairArrays.from_table(table)
    point = estimate(arrays)
    draws = bootstrap(arrays, options)
    tail = (1 - options.confidence) / 2 * 100
    summary = {
        **{key: point[key] for key in ("acceleration", "calibrated", "slope")},
        **{f"{key}_interval": [float(np.nanpercentile(draws[key], q)) for q in (tail, 100 - tail)]
           for key in ("acceleration", "calibrated")},
        "pairs": int(table["pair"].nunique()),
        **_donor_counts(table, cells, context.donor_column, options, trained),
        "control_mae": float(table.loc[table["role"] == "control", "residual"].abs().mean()),
        "options": {**asdict(options), **asdict(context)},
        "warning": warning,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "pairs.csv", index=False)
    (out / "acceleration.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(table, summary, draws, out / "acceleration.png")
    return summary


def _donor_counts(table: pd.DataFrame, cells: AnalysisCells, donor_column: str, options: AccelerationOptions,
                  trained: set[str] | None) -> dict:
    """How many donors the queries came from, and how many of them the model trained on (None: unknown)."""
    counts = {}
    for role in ("case", "control"):
        donors = set(table.loc[table["role"] == role, "donor"].astype(str))
        counts[f"{role}_donors"] = len(donors)
        counts[f"{role}_donors_trained"] = None if trained is None else len(donors & trained)
    condition = cells.obs[options.condition_column].to_numpy()
    all_controls = set(cells.obs[donor_column].to_numpy()[condition == options.control].astype(str))
    counts["control_donors_left_out_as_trained"] = None if trained is None else len(all_controls & trained)
    return counts


def _plot(table: pd.DataFrame, summary: dict, draws: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    options = summary["options"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    for role, colour in (("control", "tab:blue"), ("case", "tab:red")):
        rows = table[table["role"] == role]
        label = options["control"] if role == "control" else options["case"]
        left.scatter(rows["true_age"], rows["predicted_age"], s=10, alpha=0.5, color=colour, label=label)
    low, high = table[["true_age", "predicted_age"]].min().min(), table[["true_age", "predicted_age"]].max().max()
    left.plot([low, high], [low, high], color="grey", linewidth=1, label="predicted = true")
    left.set_xlabel("true age")
    left.set_ylabel("predicted age (context + predicted timelapse)")
    left.legend(fontsize=8)
    key = "calibrated" if np.isfinite(summary["calibrated"]) else "acceleration"
    right.hist(draws[key][np.isfinite(draws[key])], bins=40, color="grey", alpha=0.7)
    right.axvline(summary[key], color="tab:red", label=f"estimate {summary[key]:.1f}")
    for bound in summary[f"{key}_interval"]:
        right.axvline(bound, color="tab:red", linestyle="--", linewidth=1)
    right.axvline(0, color="black", linewidth=1)
    right.set_xlabel(f"{'calibrated ' if key == 'calibrated' else ''}age acceleration (time units); "
                     f"{options['confidence']:.0%} interval dashed")
    right.set_ylabel("bootstrap resamples of case and control donors")
    right.legend(fontsize=8)
    fig.suptitle(f"{options['case']} vs age-matched {options['control']}: {summary['acceleration']:+.1f} raw, "
                 f"{summary['calibrated']:+.1f} calibrated (slope {summary['slope']:.2f}), {summary['pairs']} pairs",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
