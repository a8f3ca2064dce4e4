"""One command for a time course: ``.h5ad`` in, a trained model and its held-out scores out.

medians -> vocabulary -> rank value encoding -> cell paragraphs (cells or donors held out) ->
stage 1 (beyond 2,000 cells, or when asked for) -> stage 2 -> Hugging Face export -> TimeBetweenCells on the held-out cells, with baselines.

What the data decides, so that a user's own time course does not collapse onto its mean:
the time tokens cover the data's largest Δ (a range far wider than the data made the read-out
unstable), the read-out scale ``label_scalar`` is the spread of the time points, and the
distribution over times is trained towards a Gaussian of half that width around the true Δ
(``time_smoothing``; without it, held-out predictions came out compressed to half the true range).
The training sizes follow the number of cells (``SIZINGS``: CPU-sized up to 2,000 cells, GPU-sized
beyond; chosen by measurement, benchmarks/README.md) and every one can be given.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maxtoki.errors import InputFileError, MaxtokiError
from maxtoki.model.read_out_scale import read_out_scale
from maxtoki.vocab import VOCAB_FILE, fitting_max_time

RECIPES = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class PipelineOptions:
    time_column: str
    group_columns: tuple[str, ...] = ()
    time_scale: float = 1.0
    holdout_fraction: float | None = None  # None: 0.2 unless donors are held out
    holdout_groups: tuple[str, ...] = ()
    split: str | None = None
    seed: int = 0
    workers: int = 1
    # reading, as the data commands
    gene_id_column: str | None = None
    gene_mapping: str | None = None
    layer: str | None = None
    use_raw: bool = False
    allow_non_integer: bool = False
    min_expression: float = 0.0
    chunk_size: int = 2048
    # model and training (None: sized to the time course, ``SIZINGS``)
    cell_length: int | None = None  # tokens per cell, <bos> and <eos> included
    pretrain_cell_length: int | None = None  # stage 1 reads each cell's top-ranked prefix of this length
    model_size: str = "tiny"
    examples: int | None = None
    task_ratio: float = 0.875  # TimeBetweenCells share of the stage-2 examples
    pretrain_batches: int | None = None
    temporal_batches: int | None = None
    overrides: tuple[str, ...] = field(default=())  # extra key=value for both recipes
    pretrained: str | None = None  # a model directory (import-hf, export-hf): stage 1 is skipped
    medians: str | None = None  # the gene medians the pretrained model's cells were encoded with
    # evaluation
    validation_fraction: float = 0.1  # cells apart from training and scoring, to calibrate the intervals on
    baseline_columns: tuple[str, ...] = ()  # a cell's kind for the naive baseline, e.g. cell_type sex

    def __post_init__(self):
        if self.holdout_fraction is not None and not 0 < self.holdout_fraction < 1:
            raise MaxtokiError(f"--holdout-fraction {self.holdout_fraction:g}: give a fraction between 0 and 1")
        if not 0 <= self.validation_fraction < 1:
            raise MaxtokiError(f"--validation-fraction {self.validation_fraction:g}: give a fraction in [0, 1)")
        if self.cell_length is not None and self.cell_length < 16:
            raise MaxtokiError("--cell-length must be at least 16 tokens")
        if self.pretrain_cell_length is not None and not (
                16 <= self.pretrain_cell_length <= (self.cell_length or self.pretrain_cell_length)):
            raise MaxtokiError(f"--pretrain-cell-length {self.pretrain_cell_length}: give at least 16 tokens and at "
                               f"most --cell-length ({self.cell_length})")
        if self.medians and not self.pretrained:
            raise MaxtokiError("--medians goes with --pretrained (without it the pipeline computes the data's own)")
        if min(n for n in (self.temporal_batches, self.examples, 1) if n is not None) < 1:
            raise MaxtokiError("--temporal-batches and --examples must be positive")
        if self.pretrain_batches is not None and self.pretrain_batches < 0:
            raise MaxtokiError("--pretrain-batches must be 0 (no stage 1) or more")
        if not 0 < self.task_ratio <= 1:
            raise MaxtokiError(f"--task-ratio {self.task_ratio:g}: give the TimeBetweenCells share, in (0, 1]")


@dataclass(frozen=True)
class Sizing:
    """The training sizes the pipeline picks when they are not given."""

    name: str
    cell_length: int
    pretrain_cell_length: int
    pretrain_batches: int
    temporal_batches: int
    examples: int


# CPU-sized, for time courses of up to SMALL_COURSE cells: chosen by measurement on the bundled HSMM course on
# 2 CPU cores (benchmarks/README.md, "Cells long enough to carry the time"): 1,024-token cells carry twice the
# time 256-token ones do for a per-cell read-out; no stage 1 (on a few hundred cells, 100 batches of next-gene
# prediction on the same cells left every seed worse than stage 2 from gene embeddings from the cells: 16.8 /
# 10.2 / 14.9 h against 12.2 / 8.4 / 12.3 h), so that --pretrain-batches N only turns it on (each cell's top
# 254 genes); 350 stage-2 batches. GPU-sized for more cells: the paper's 4,096-token stage-1 context and ten
# times the training.
SMALL_COURSE = 2_000
SIZINGS = (Sizing("CPU-sized", 1024, 256, 0, 350, 4000), Sizing("GPU-sized", 4096, 4096, 2000, 4000, 20000))


def sized(options: PipelineOptions, cells: int) -> tuple[PipelineOptions, Sizing]:
    """``options`` with every training size it leaves open taken from the sizing for ``cells`` cells."""
    import dataclasses

    sizing = SIZINGS[0] if cells <= SMALL_COURSE else SIZINGS[1]
    cell_length = options.cell_length or sizing.cell_length
    chosen = dict(cell_length=cell_length,
                  pretrain_cell_length=options.pretrain_cell_length or min(cell_length, sizing.pretrain_cell_length),
                  pretrain_batches=sizing.pretrain_batches if options.pretrain_batches is None
                  else options.pretrain_batches,
                  temporal_batches=options.temporal_batches or sizing.temporal_batches,
                  examples=options.examples or sizing.examples)
    return dataclasses.replace(options, **chosen), sizing


@dataclass(frozen=True)
class TimeCourse:
    """What the pipeline reads off the data before anything is written."""

    cells: int
    times: np.ndarray  # distinct times, in time units (time * time_scale, rounded)

    @property
    def max_timelapse(self) -> float:
        return float(self.times.max() - self.times.min())


def read_time_course(data: str | Path, options: PipelineOptions) -> TimeCourse:
    """The time column checked: present, numeric, at least two distinct times, enough cells to hold out."""
    from maxtoki.data.cells.sources import ReadOptions, open_source

    with open_source(data, ReadOptions(options.gene_id_column, options.layer, options.use_raw)) as source:
        source.require_obs_columns([options.time_column, *options.group_columns, *options.baseline_columns],
                                   "time, group or baseline")
        times = source.numeric_obs(options.time_column, 0, source.n_cells)
    from maxtoki.data.paragraphs.sampling import to_time_units

    known = to_time_units(times[~np.isnan(times)], options.time_scale)  # as the paragraphs will round them
    distinct = np.unique(known)
    if len(distinct) < 2:
        raise InputFileError(Path(data), f"obs column {options.time_column!r} has {len(distinct)} distinct time(s) "
                                         "(after --time-scale); a time course needs at least two")
    if not (options.holdout_groups or options.split):
        fraction = options.holdout_fraction or 0.2
        per_time = np.array([np.sum(known == t) for t in distinct])
        if np.all(np.round(fraction * per_time) < 1) or np.all(per_time - np.round(fraction * per_time) < 1):
            raise InputFileError(Path(data), f"too few cells to hold any out: {int(per_time.sum())} cells with a "
                                             f"time, at most {int(per_time.max())} per time point; give more cells "
                                             "or a larger --holdout-fraction")
    return TimeCourse(cells=len(known), times=distinct)


def genes_in_cells(cells: str | Path) -> list[str]:
    """The genes that occur in the tokenized cells at ``cells``."""
    from maxtoki.data.paragraphs.cell_store import CellStore

    store = CellStore(str(cells))
    vocab = store.vocabulary()
    seen = np.zeros(len(vocab), dtype=bool)
    for cell in store:
        seen[np.asarray(cell["input_ids"], dtype=np.int64)] = True
    return [vocab.token(int(i)) for i in np.flatnonzero(seen & vocab.is_gene)]


def time_token_range(course: TimeCourse) -> int:
    """``--max-time`` of the vocabulary for the data's largest Δ."""
    return fitting_max_time(course.max_timelapse)


def _evaluation_splits(options: PipelineOptions) -> tuple[str, str | None]:
    """The split that scores the model, and the one its intervals are calibrated on (None: none)."""
    from maxtoki.data.paragraphs.splits import HOLDOUT, VALIDATION, parse_split

    if options.split and not (options.holdout_groups or options.holdout_fraction):
        names = [name for name in parse_split(options.split) if name != "train"]
        if not names:
            raise MaxtokiError(f"--split {options.split}: needs a split besides train to evaluate on")
        scored = "test" if "test" in names else names[-1]
        return scored, next((name for name in names if name != scored), None)
    return HOLDOUT, VALIDATION if options.validation_fraction else None


def tokenize_options(options: PipelineOptions, read):
    from maxtoki.data.cells.tokenize import TokenizeOptions

    return TokenizeOptions(read, options.time_column, tuple(options.group_columns), tuple(options.baseline_columns),
                           options.cell_length, options.allow_non_integer, options.chunk_size, options.min_expression)


def encode_from_scratch(data, out: Path, options: PipelineOptions, course: TimeCourse, max_time: int, tokenize,
                        log=print) -> None:
    """Steps 1-3 for a model trained here: medians of the data, a vocabulary of the genes cells use, the cells."""
    from maxtoki.data.cells.medians import compute_medians, write_medians
    from maxtoki.data.cells.sources import ReadOptions
    from maxtoki.data.cells.tokenize import tokenize_files
    from maxtoki.vocab import Vocabulary

    read = ReadOptions(options.gene_id_column, options.layer, options.use_raw)
    log(f"== 1/8 gene medians of {course.cells:,} cells with a time ({len(course.times)} time points)")
    medians, _ = compute_medians([data], read=read, gene_mapping_path=options.gene_mapping,
                                 allow_non_integer=options.allow_non_integer, min_expression=options.min_expression,
                                 workers=options.workers, chunk_size=options.chunk_size)
    if not medians:
        raise MaxtokiError(f"{data}: no cell had any expressed gene; nothing to compute medians from")
    write_medians(medians, out / "medians.json")

    def encode(genes) -> None:
        Vocabulary.build(genes, max_time=max_time).save(out / VOCAB_FILE)
        tokenize_files([data], out / VOCAB_FILE, out / "medians.json", str(out / "cells"), options=tokenize,
                       gene_mapping_path=options.gene_mapping, workers=options.workers, overwrite=True)

    # Genes that never make a cell's top-ranked list are never seen: in the vocabulary they only cost
    # output-layer time and teach stage 1 to push them down, with a constant direction of its hidden
    # state that stage 2 then has to unlearn. The second encoding gives every cell the same genes.
    log(f"== 2/8 vocabulary: the genes among some cell's {options.cell_length - 2} top-ranked ones, time tokens "
        f"-{max_time}..{max_time - 1} (the data's largest Δ is {course.max_timelapse:g})")
    encode(medians.keys())
    genes = genes_in_cells(out / "cells")
    log(f"== 3/8 rank value encoding: each cell's top-ranked genes, {len(genes):,} of the {len(medians):,} genes "
        "with a median")
    encode(genes)
    encode_pretrain_prefix(data, out, options, tokenize)


def stage1_length(options: PipelineOptions) -> int:
    return min(options.pretrain_cell_length or options.cell_length, options.cell_length)


def encode_pretrain_prefix(data, out: Path, options: PipelineOptions, tokenize) -> None:
    """Stage 1's cells, when it reads a shorter top-ranked prefix of each cell than stage 2 (``pretrain-cells/``):
    next-gene prediction scores every position over the whole vocabulary, so its cost grows with the cell while
    what it teaches (which genes go together) is mostly in the top ranks."""
    import dataclasses

    from maxtoki.data.cells.tokenize import tokenize_files

    if stage1_length(options) == options.cell_length or options.pretrain_batches == 0:
        return
    tokenize_files([data], out / VOCAB_FILE, out / "medians.json", str(out / "pretrain-cells"),
                   options=dataclasses.replace(tokenize, model_input_size=stage1_length(options)),
                   gene_mapping_path=options.gene_mapping, workers=options.workers, overwrite=True)


def pretrained_inputs(options: PipelineOptions, course: TimeCourse):
    """The pretrained model's vocabulary and the medians its cells were encoded with (the released ones by
    default for the released vocabulary), checked before anything is written."""
    from maxtoki.data.cells.tokenize import load_medians
    from maxtoki.released import is_released_vocabulary, released_medians
    from maxtoki.vocab import Vocabulary

    pretrained = Path(options.pretrained)
    if not (pretrained / VOCAB_FILE).exists() or not (pretrained / "config.json").exists():
        raise MaxtokiError(f"--pretrained {pretrained}: not a model directory (config.json and vocab.json); make one "
                           "with maxtoki import-hf (released weights) or export-hf")
    vocab = Vocabulary.load(pretrained / VOCAB_FILE)
    released = is_released_vocabulary(vocab)
    if options.medians:
        medians, source = load_medians(options.medians), options.medians
    elif released:
        medians, source = released_medians(), "the released gene medians (bundled)"
    else:
        raise MaxtokiError(f"--pretrained {pretrained}: give --medians, the gene medians its training cells were "
                           "encoded with (only the released vocabulary has its medians bundled)")
    if course.max_timelapse > vocab.time_range[1]:
        raise MaxtokiError(f"the data's largest Δ is {course.max_timelapse:g} time units, the model's time tokens "
                           f"reach {vocab.time_range[1]}; give a --time-scale that brings it within")
    return vocab, medians, source + (", for the released vocabulary" if released and not options.medians else "")


def encode_for_pretrained(data, out: Path, options: PipelineOptions, inputs, tokenize, log=print) -> None:
    """Steps 1-3 for a pretrained model: its vocabulary and medians (``pretrained_inputs``), the cells encoded
    as it expects."""
    from maxtoki.data.cells.tokenize import tokenize_files

    vocab, medians, source = inputs
    log(f"== 1/8 gene medians: {source}, {len(medians):,} genes")
    (out / "medians.json").write_text(json.dumps(medians) + "\n")
    low, high = vocab.time_range
    log(f"== 2/8 vocabulary: the model's, {len(vocab):,} tokens ({int(vocab.is_gene.sum()):,} genes, time tokens "
        f"{low}..{high})")
    vocab.save(out / VOCAB_FILE)
    log(f"== 3/8 rank value encoding: each cell's {options.cell_length - 2} top-ranked genes of the model's")
    tokenize_files([data], out / VOCAB_FILE, out / "medians.json", str(out / "cells"), options=tokenize,
                   gene_mapping_path=options.gene_mapping, workers=options.workers, overwrite=True)


def run_pipeline(data: str | Path, out: str | Path, options: PipelineOptions, log=print) -> dict:
    """Every step, writing under ``out``; returns the metrics of ``predict time`` on the held-out cells."""
    from maxtoki.data.cells.sources import ReadOptions
    from maxtoki.data.paragraphs.build import build_paragraphs
    from maxtoki.data.paragraphs.sampling import ParagraphOptions
    from maxtoki.data.paragraphs.splits import parse_split

    start = time.monotonic()
    out = Path(out)
    course = read_time_course(data, options)
    options, sizing = sized(options, course.cells)
    stage1 = f"{options.pretrain_batches} stage-1 (cells of {stage1_length(options)} tokens) and " \
        if options.pretrain_batches and not options.pretrained else "no stage 1, "
    log(f"== sizes for {course.cells:,} cells, {sizing.name} (CPU-sized up to {SMALL_COURSE:,} cells, GPU-sized "
        f"beyond): {options.cell_length}-token cells, {options.model_size} model, {stage1}"
        f"{options.temporal_batches} stage-2 batches, {options.examples:,} stage-2 examples")
    max_time, scale = time_token_range(course), read_out_scale(course.times)
    if options.pretrained and options.model_size != "tiny":
        raise MaxtokiError("--model-size and --pretrained: the pretrained model's size is the size")
    inputs = pretrained_inputs(options, course) if options.pretrained else None
    evaluation, calibration = _evaluation_splits(options)
    fraction = options.holdout_fraction
    if fraction is None and not (options.holdout_groups or options.split):
        fraction = 0.2
    out.mkdir(parents=True, exist_ok=True)
    read = ReadOptions(options.gene_id_column, options.layer, options.use_raw)

    if options.pretrained:
        encode_for_pretrained(data, out, options, inputs, tokenize_options(options, read), log)
    else:
        encode_from_scratch(data, out, options, course, max_time, tokenize_options(options, read), log)

    held = (f"{fraction:.0%} of the cells of every time point" if fraction else
            f"donors {', '.join(options.holdout_groups)}" if options.holdout_groups else f"split {options.split}")
    apart = (f"; another {options.validation_fraction:.0%} of the cells apart to calibrate on"
             if calibration == "validation" else f"; split {calibration} to calibrate on" if calibration else "")
    log(f"== 4/8 cell paragraphs (pairs of cells and the time between them); held out: {held}{apart}")
    max_seq_len = 2 * options.cell_length + 8
    split = dict(split=parse_split(options.split) if options.split else None,
                 holdout_groups=tuple(options.holdout_groups), holdout_fraction=fraction or 0.0,
                 validation_fraction=options.validation_fraction if calibration == "validation" else 0.0,
                 workers=options.workers, overwrite=True)
    pairs = dict(seed=options.seed, min_timepoints=2, max_timepoints=2, max_seq_len=max_seq_len,
                 time_scale=options.time_scale)
    build_paragraphs(str(out / "cells"), None, str(out / "paragraphs"),
                     ParagraphOptions(num_examples=options.examples, task_ratio=options.task_ratio, **pairs), **split)
    build_paragraphs(str(out / "cells"), None, str(out / "eval"),
                     ParagraphOptions(num_examples=max(1000, options.examples // 4), task_ratio=1.0,
                                      eval_layout=True, **pairs), **split)

    metrics = train_and_evaluate(out, options, (evaluation, calibration), max_seq_len, scale, log)
    metrics["pipeline"] = {"seconds": round(time.monotonic() - start), "max_time": max_time, "label_scalar": scale,
                           "evaluated_on": f"{out / 'eval' / evaluation}"}
    (out / "predictions" / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def context_extension(pretrained: str | Path, max_seq_len: int) -> list[str]:
    """Recipe keys that extend a pretrained model's context to ``max_seq_len`` as the paper did (llama3-style RoPE
    scaling, 4x, more if needed); none when its own context holds the paragraphs (its weights then compute exactly
    what they did in stage 1)."""
    original = int(json.loads((Path(pretrained) / "config.json").read_text())["max_position_embeddings"])
    if max_seq_len <= original:
        return ["model.rope_scaling=null"]
    return [f"model.rope_scaling.original_max_position_embeddings={original}",
            f"model.rope_scaling.factor={float(max(4, math.ceil(max_seq_len / original)))}"]


def train_and_evaluate(out: Path, options: PipelineOptions, splits: tuple[str, str | None], max_seq_len: int,
                       scale: float, log=print) -> dict:
    """Stage 1, stage 2, export, then predict time on the held-out prompts (``splits``: the scored split, and the
    one to calibrate the intervals on, which stage 2 also evaluates on); returns the metrics."""
    evaluation, calibration = splits
    from maxtoki.inference.export import export_hf
    from maxtoki.inference.predict_time import predict_time
    from maxtoki.training import train_from_recipe

    for recipe in ("pretrain/tiny-cpu.yaml", "temporal/tiny-cpu.yaml"):
        if not (RECIPES / recipe).exists():
            raise MaxtokiError(f"{RECIPES / recipe}: recipe not found; run the pipeline from a checkout of the "
                               "repository (the recipes live in configs/)")
    runs = out / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # a rerun trains afresh (autoresume would find the runs finished)
    common = [f"seed={options.seed}", *options.overrides]
    if options.pretrained:
        log(f"== 5/8 stage 1: skipped, the weights of {options.pretrained}")
        start = [f"model.pretrained={options.pretrained}", "model.size=null", "load_path=null",
                 *context_extension(options.pretrained, max_seq_len)]
        source = f"the weights of {options.pretrained}"
    elif options.pretrain_batches == 0:
        common.insert(0, f"model.size={options.model_size}")
        log("== 5/8 stage 1: none (0 batches); stage 2 starts from gene embeddings from the cells")
        start = ["load_path=null", "model.rope_scaling=null", f"model.gene_embeddings_from={out / 'cells'}"]
        source = "gene embeddings from the cells"
    else:
        common.insert(0, f"model.size={options.model_size}")
        length = stage1_length(options)
        prefix = f", each cell's top {length - 2} genes" if length < options.cell_length else ""
        log(f"== 5/8 stage 1: next-gene prediction on single cells ({options.model_size} model, "
            f"{options.pretrain_batches} batches{prefix})")
        cells = out / ("pretrain-cells" if length < options.cell_length else "cells")
        train_from_recipe(str(RECIPES / "pretrain/tiny-cpu.yaml"), [
            f"variables.data={cells}", f"variables.vocab={out / VOCAB_FILE}",
            f"save_folder={runs / 'pretrain'}", f"max_seq_len={length}",
            f"model.gene_embeddings_from={out / 'cells'}",
            f"max_duration={options.pretrain_batches}ba", f"eval_interval={options.pretrain_batches}ba",
            f"save_interval={options.pretrain_batches}ba", *common])
        start = [f"variables.pretrained={runs / 'pretrain' / 'latest-rank0.pt'}",
                 f"model.rope_scaling.original_max_position_embeddings={length}"]
        source = "the stage-1 weights"

    log(f"== 6/8 stage 2: TimeBetweenCells and NextCell from {source} ({options.temporal_batches} "
        f"batches, read-out scale {scale:.3g})")
    trainer = train_from_recipe(str(RECIPES / "temporal/tiny-cpu.yaml"), [
        f"variables.data={out / 'paragraphs' / 'train'}",
        f"variables.eval_data={out / 'paragraphs' / (calibration or evaluation)}",
        f"variables.vocab={out / VOCAB_FILE}", *start,
        f"save_folder={runs / 'temporal'}", f"max_seq_len={max_seq_len}",
        f"model.label_scalar={scale}", f"model.time_smoothing={scale / 2}",
        f"max_duration={options.temporal_batches}ba",
        f"eval_interval={options.temporal_batches}ba", f"save_interval={options.temporal_batches}ba", *common])

    # the trained model is written before anything that could fail on what it learned (e.g. calibration)
    log("== 7/8 the model as a Hugging Face directory")
    checkpoint = str(runs / "temporal" / "latest-rank0.pt")
    export_hf(checkpoint, out / "hf-model", out / VOCAB_FILE, options.time_column)

    log("== 8/8 predicted time between held-out cells, with baselines")
    metrics = predict_time(checkpoint, str(out / "eval" / evaluation), out / "predictions",
                           train_data=str(out / "paragraphs" / "train"),
                           calibration_data=str(out / "eval" / calibration) if calibration else None,
                           baseline_columns=tuple(options.baseline_columns), calibration_failure="warn")
    # stage 2's own evaluation, on paragraphs of cells it did not train on: NextCell cross-entropy among them
    metrics["stage2_evaluation"] = {"data": str(out / "paragraphs" / (calibration or evaluation)),
                                    **{key: float(value) for key, value in trainer.state.eval_metric_values.items()}}
    return metrics


def _calibration_source(calibrated: dict) -> str:
    held = f"{calibrated['prompts']} other held-out prompts" if calibrated["prompts"] else ""
    also = calibrated.get("also_from", "")
    return " and ".join(part for part in (held, also) if part)


SCORE_ROWS = [("model (expected value)", "model"), ("model (most likely token)", "model_argmax"),
              ("baseline: training-mean Δ", "baseline_training_mean"),
              ("baseline: most common time of kind", "baseline_most_common_time"),
              ("baseline: linear regressor", "baseline_linear"),
              ("ceiling: per-cell time classifier", "baseline_ceiling")]


def _score_lines(rows: dict, keys: list[tuple[str, str]]) -> list[str]:
    width = max(36, *(len(name) + 2 for name, _ in keys))
    lines = [f"  {'':<{width}}{'MAE':>8}{'median |e|':>12}{'Pearson r':>10}"]
    for name, key in keys:
        if key not in rows:
            continue
        score = rows[key]
        pearson = "-" if score["pearson_r"] != score["pearson_r"] else f"{score['pearson_r']:.2f}"  # NaN: constant
        lines.append(f"  {name:<{width}}{score['mae']:>8.1f}{score['median_absolute_error']:>12.1f}{pearson:>10}")
    return lines


def scores_table(metrics: dict, unit: str = "") -> str:
    """The held-out scores of the model and its baselines, as ``predict time``, the demo and the pipeline print
    them: per prompt, the intervals' coverage, and per donor where donors exist."""
    from maxtoki.inference.predict_time import PAPER_BASELINES

    kinds = metrics["baseline_most_common_time_fit"]["columns"]
    rows = [(name + (f" ({'+'.join(kinds)})" if key == "baseline_most_common_time" and kinds else ""), key)
            for name, key in SCORE_ROWS]
    lines = [f"Time between two held-out cells, {metrics['examples']} prompts{f' ({unit})' if unit else ''}:",
             *_score_lines(metrics, rows)]
    model = metrics["model"]["mae"]
    paper = [(name, key) for name, key in rows if key in PAPER_BASELINES]
    baselines = {key: metrics[key]["mae"] for _, key in paper}
    beaten = [name.removeprefix("baseline: ") for name, key in paper if model < baselines[key]]
    unbeaten = [name.removeprefix("baseline: ") for name, key in paper if model >= baselines[key]]
    verdict = ("beats every baseline" if not unbeaten else
               f"beats the baselines {' and '.join(beaten)}, not {' and '.join(unbeaten)}" if beaten else
               "does not beat any baseline: it has not learned to place cells in time")
    lines.append(f"The model {verdict} (MAE {model:.1f}; the baselines' "
                 f"{', '.join(f'{v:.1f}' for v in baselines.values())}).")
    if "baseline_ceiling" in metrics:
        ceiling = metrics["baseline_ceiling"]["mae"]
        lines.append(f"The ceiling, a per-cell time classifier on the same encoded cells (how much time they carry "
                     f"for a linear read-out), misses by {ceiling:.1f}: the model's error is "
                     f"{model / ceiling:.2f} x the ceiling's" if ceiling > 0 else
                     f"The ceiling, a per-cell time classifier on the same encoded cells, is exact (MAE 0)")
        lines[-1] += "."
    lines.append(f"Its {metrics['interval_nominal']:.0%} intervals hold the true time for "
                 f"{metrics['interval_coverage']:.0%} of the prompts (mean width {metrics['interval_mean_width']:.1f})"
                 + (f"; calibrated on {_calibration_source(metrics['calibrated'])}: "
                    f"{metrics['calibrated']['coverage']:.0%} (mean width {metrics['calibrated']['mean_width']:.1f})"
                    if "calibrated" in metrics else "") + ".")
    if "per_donor" in metrics:
        donors = metrics["per_donor"]
        lines += [f"Per donor: the median predicted time of each held-out donor's cells at each of its times "
                  f"({donors['donors']} donors, {donors['points']} donor-times):",
                  *_score_lines(donors, [row for row in rows if row[1] != "model_argmax"])]
    if metrics.get("warning"):
        lines.append(f"Warning: {metrics['warning']}")
    return "\n".join(lines)
