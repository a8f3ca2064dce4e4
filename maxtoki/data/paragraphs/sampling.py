"""Stage-2 data: cell paragraphs with time-lapse tokens, sampled from tokenized cells.

One example: a group (trajectory, e.g. a donor) chosen with probability ~ size ** (1 - balance);
n distinct times of that group (n in [min_timepoints, max_timepoints], at most the group's number
of times) in random order, the last being the query time; one random cell per time. The context is
``c1 Δ1 c2 ... c(n-1)`` with Δi = t(i+1) - t(i) as numeric tokens, then

- TimeBetweenCells: ``context <boq> c_n <eoq>`` + response ``Δ(n-1)``;
- NextCell: ``context <boq> Δ(n-1) <eoq>`` + response ``c_n``.

When the example exceeds ``max_seq_len``, genes are cut from the end of the first context cell
(keeping its ``<eos>``). Times are integers: ``time * time_scale`` rounded half away from zero.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from maxtoki.data.paragraphs.blueprint import NEXT_CELL, TIME_BETWEEN_CELLS, Blueprint
from maxtoki.data.paragraphs.cell_store import CellIndex
from maxtoki.errors import MaxtokiError
from maxtoki.vocab import Vocabulary

MAX_DRAWS_PER_EXAMPLE = 100


@dataclass(frozen=True)
class ParagraphOptions:
    num_examples: int = 10_000
    seed: int = 0
    min_timepoints: int = 3
    max_timepoints: int = 4
    task_ratio: float = 0.5  # share of TimeBetweenCells examples
    balance: float = 0.0  # 0: groups drawn in proportion to their size; 1: uniformly
    negative_timelapses: bool = True
    max_seq_len: int = 16_384
    time_scale: float = 1.0
    clip: bool = False
    eval_layout: bool = False

    def __post_init__(self):
        if self.num_examples < 1:
            raise MaxtokiError("--num-examples must be at least 1")
        if not 2 <= self.min_timepoints <= self.max_timepoints:
            raise MaxtokiError("need 2 <= --min-timepoints <= --max-timepoints")
        if not 0 <= self.task_ratio <= 1 or not 0 <= self.balance <= 1:
            raise MaxtokiError("--task-ratio and --balance must lie in [0, 1]")
        if not self.time_scale > 0:
            raise MaxtokiError("--time-scale must be positive")

    def as_dict(self) -> dict:
        return asdict(self)


def to_time_units(times: np.ndarray, scale: float) -> np.ndarray:
    """``time * scale`` rounded half away from zero (2.5 -> 3, -2.5 -> -3), as int64."""
    scaled = np.asarray(times, dtype=np.float64) * scale
    return (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int64)


@dataclass
class _Group:
    times: np.ndarray  # distinct integer times, sorted
    cells: list[np.ndarray]  # cell indices at each time


def trajectory_groups(index: CellIndex, cells: np.ndarray, time_scale: float) -> tuple[dict[int, _Group], Counter]:
    """Usable groups among ``cells`` (indices into the index), and what was skipped."""
    skipped = Counter()
    known = cells[~np.isnan(index.times[cells])]
    skipped["cells_without_time"] = len(cells) - len(known)
    units = to_time_units(index.times[known], time_scale)
    order = np.lexsort((units, index.group_codes[known]))
    known, units, codes = known[order], units[order], index.group_codes[known][order]
    groups = {}
    for code in np.unique(codes):
        members = codes == code
        group_cells, group_units = known[members], units[members]
        times, starts = np.unique(group_units, return_index=True)
        if len(times) < 2:
            skipped["groups_with_one_time"] += 1
            continue
        groups[int(code)] = _Group(times, np.split(group_cells, starts[1:]))
    return groups, +skipped


def sample_blueprint(index: CellIndex, cells: np.ndarray, vocab: Vocabulary, options: ParagraphOptions,
                     rng: np.random.Generator, name: str = "") -> tuple[Blueprint, dict]:
    """Draw ``options.num_examples`` examples from the given cells; returns the blueprint and counts."""
    groups, skipped = trajectory_groups(index, cells, options.time_scale)
    where = f" in split {name!r}" if name else ""
    if not groups:
        raise MaxtokiError(f"no trajectory group{where} has cells at two or more distinct times "
                           f"({dict(skipped)}); check --time-column at tokenization and --group-columns")
    codes = np.array(sorted(groups))
    sizes = np.array([sum(len(c) for c in groups[g].cells) for g in codes], dtype=np.float64)
    weights = sizes ** (1.0 - options.balance)
    probabilities = weights / weights.sum()
    lo, hi = vocab.time_range
    offsets, cell_list, time_list, tasks, example_groups = [0], [], [], [], []
    redrawn = 0
    for _ in range(options.num_examples):
        for _attempt in range(MAX_DRAWS_PER_EXAMPLE):
            code = int(codes[rng.choice(len(codes), p=probabilities)])
            group = groups[code]
            n = int(rng.integers(options.min_timepoints, options.max_timepoints + 1))
            n = min(n, len(group.times))
            picks = rng.choice(len(group.times), size=n, replace=False)
            if not options.negative_timelapses:
                picks = np.sort(picks)
            chosen = np.array([group.cells[p][rng.integers(len(group.cells[p]))] for p in picks], dtype=np.int64)
            task = TIME_BETWEEN_CELLS if rng.random() < options.task_ratio else NEXT_CELL
            if paragraph_length(index.lengths[chosen]) - options.max_seq_len <= index.lengths[chosen[0]] - 3:
                break
            redrawn += 1
        else:
            raise MaxtokiError(f"examples{where} do not fit in --max-seq-len {options.max_seq_len} even with the "
                               "first cell cut to one gene; raise --max-seq-len or lower --max-timepoints")
        times = group.times[picks]
        deltas = np.diff(times)
        if (deltas < lo).any() or (deltas > hi).any():
            if not options.clip:
                raise MaxtokiError(f"group {index.group_names[code]!r}: times {times.tolist()} give timelapses "
                                   f"{deltas.tolist()} outside the vocabulary's range {lo}..{hi}; lower "
                                   "--time-scale, build the vocabulary with a larger --max-time, or pass --clip")
        offsets.append(offsets[-1] + n)
        cell_list.append(chosen)
        time_list.append(times)
        tasks.append(task)
        example_groups.append(code)
    blueprint = Blueprint(np.array(offsets, dtype=np.int64), np.concatenate(cell_list), np.concatenate(time_list),
                          np.array(tasks, dtype=np.int8), np.array(example_groups, dtype=np.int64),
                          list(index.group_names))
    counts = {"examples": len(blueprint), "groups_used": len(groups), "redrawn_too_long": redrawn,
              "skipped": dict(skipped),
              "tasks": {"NextCell": int((blueprint.tasks == NEXT_CELL).sum()),
                        "TimeBetweenCells": int((blueprint.tasks == TIME_BETWEEN_CELLS).sum())}}
    return blueprint, counts


def paragraph_length(cell_lengths: np.ndarray) -> int:
    """Tokens of a whole example (either task): n cells, n-2 context timelapses, <boq>, <eoq> and one Δ."""
    return int(cell_lengths.sum()) + (len(cell_lengths) - 2) + 3


def timelapse_token(vocab: Vocabulary, delta: int, clip: bool) -> int:
    lo, hi = vocab.time_range
    return vocab.time_token(min(max(delta, lo), hi) if clip else delta)


def assemble(cells: list[np.ndarray], times: np.ndarray, task: int, vocab: Vocabulary, max_seq_len: int,
             clip: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Prompt and response token arrays of one example, and its target Δ (after clipping)."""
    deltas = np.diff(times)
    target = int(deltas[-1])
    lo, hi = vocab.time_range
    if clip:
        target = min(max(target, lo), hi)
    pieces = []
    for i, cell in enumerate(cells[:-1]):
        if i:
            pieces.append([timelapse_token(vocab, int(deltas[i - 1]), clip)])
        pieces.append(cell)
    pieces.append([vocab.boq_id])
    if task == TIME_BETWEEN_CELLS:
        pieces += [cells[-1], [vocab.eoq_id]]
        response = np.array([vocab.time_token(target)])
    else:
        pieces += [[vocab.time_token(target)], [vocab.eoq_id]]
        response = np.asarray(cells[-1])
    excess = sum(len(p) for p in pieces) + len(response) - max_seq_len
    if excess > 0:
        first = np.asarray(pieces[0])
        if len(first) - excess < 3:
            raise MaxtokiError(f"an example needs {excess} fewer tokens than the first cell can give up")
        pieces[0] = np.concatenate([first[:len(first) - 1 - excess], first[-1:]])
    prompt = np.concatenate([np.asarray(p) for p in pieces]).astype(vocab.token_dtype)
    return prompt, response.astype(vocab.token_dtype), target
