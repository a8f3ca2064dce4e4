"""``maxtoki pipeline``: one time course .h5ad to a trained model and its held-out scores."""

from __future__ import annotations

from pathlib import Path

from maxtoki.cli.options import add_reading_options, runs_with_config
from maxtoki.errors import MaxtokiError


def add_commands(commands) -> None:
    pipeline = commands.add_parser(
        "pipeline", help="one time course .h5ad -> trained model and its held-out scores, every step in one command")
    pipeline.add_argument("data", metavar="DATA", help="an .h5ad with a time column (counts, or FPKM/TPM with "
                                                       "--allow-non-integer)")
    pipeline.add_argument("--time-column", required=True, metavar="COL", help="numeric obs column: each cell's time")
    pipeline.add_argument("--out", required=True, help="output directory")
    add_reading_options(pipeline)
    pipeline.add_argument("--group-columns", nargs="+", default=[], metavar="COL",
                          help="obs columns naming each cell's trajectory (e.g. donor)")
    pipeline.add_argument("--time-scale", type=float, default=1.0, metavar="S",
                          help="time tokens per time-column unit (e.g. 1/12 for months -> years; default 1)")
    held = pipeline.add_mutually_exclusive_group()
    held.add_argument("--holdout-fraction", type=float, metavar="F",
                      help="hold out this share of the cells of every time point (default 0.2)")
    held.add_argument("--holdout-groups", nargs="+", default=[], metavar="GROUP", help="hold out these donors")
    held.add_argument("--split", metavar="SPEC", help="deal whole donors, e.g. train=0.8,test=0.2; scores on test")
    pipeline.add_argument("--validation-fraction", type=float, default=0.1, metavar="F",
                          help="deal this share of the other cells apart, to calibrate the intervals on (default "
                               "0.1; 0: raw intervals; with --split, a second evaluation split serves)")
    pipeline.add_argument("--baseline-columns", nargs="+", default=[], metavar="COL",
                          help="obs columns that make a cell's kind for the naive baseline (the most common time "
                               "of training cells of that kind), e.g. cell_type sex")
    pipeline.add_argument("--seed", type=int, default=0)
    pipeline.add_argument("--cell-length", type=int, metavar="N",
                          help="tokens per cell: its N-2 top-ranked genes (default: 1024 for up to 2,000 cells, "
                               "4096 beyond; longer cells carry more of the time and train slower)")
    pipeline.add_argument("--pretrain-cell-length", type=int, metavar="N",
                          help="stage 1 reads each cell's top N-2 genes only (default: 256 for up to 2,000 cells, "
                               "the whole cell beyond)")
    pipeline.add_argument("--model-size", default="tiny", help="tiny (CPU), 217m or 1b (GPU) (default tiny)")
    pipeline.add_argument("--pretrained", metavar="MODEL",
                          help="start stage 2 from this model directory (maxtoki import-hf of the released weights, "
                               "or export-hf): stage 1 is skipped, the cells are encoded with its vocabulary")
    pipeline.add_argument("--medians", metavar="JSON",
                          help="with --pretrained: the gene medians its cells were encoded with (default for the "
                               "released vocabulary: the released medians)")
    pipeline.add_argument("--examples", type=int, metavar="N",
                          help="stage-2 examples, dealt to the splits by their shares of the cells (default: 4,000 for up to "
                               "2,000 cells, 20,000 beyond)")
    pipeline.add_argument("--task-ratio", type=float, default=0.875, metavar="F",
                          help="TimeBetweenCells share of the stage-2 examples, the rest NextCell (default 0.875)")
    pipeline.add_argument("--pretrain-batches", type=int, metavar="N",
                          help="stage-1 batches (default: 0 for up to 2,000 cells, 2,000 beyond; 0: no stage 1, stage 2 "
                               "starts from gene embeddings from the cells)")
    pipeline.add_argument("--temporal-batches", type=int, metavar="N",
                          help="stage-2 batches (default: 350 for up to 2,000 cells, 4,000 beyond)")
    pipeline.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                          help="recipe keys for both stages, e.g. device_train_microbatch_size=4")
    runs_with_config(pipeline, _run_pipeline, runs_model=True)


def _run_pipeline(args) -> None:
    from maxtoki.pipeline import PipelineOptions, run_pipeline, scores_table

    if args.workers < 1:
        raise MaxtokiError("--workers must be at least 1")
    options = PipelineOptions(args.time_column, tuple(args.group_columns), args.time_scale, args.holdout_fraction,
                              tuple(args.holdout_groups), args.split, args.seed, args.workers, args.gene_id_column,
                              args.gene_mapping, args.layer, args.use_raw, args.allow_non_integer,
                              args.min_expression, args.chunk_size, cell_length=args.cell_length,
                              model_size=args.model_size, examples=args.examples, task_ratio=args.task_ratio,
                              pretrain_batches=args.pretrain_batches, temporal_batches=args.temporal_batches,
                              overrides=tuple(args.overrides), validation_fraction=args.validation_fraction,
                              baseline_columns=tuple(args.baseline_columns), pretrained=args.pretrained,
                              medians=args.medians, pretrain_cell_length=args.pretrain_cell_length)
    metrics = run_pipeline(args.data, args.out, options, log=lambda line: print(line, flush=True))
    print()
    print(scores_table(metrics, f"{args.time_column} x {args.time_scale:g}" if args.time_scale != 1 else
                       args.time_column))
    print(f"\nFinished in {metrics['pipeline']['seconds']} s; predictions.csv, metrics.json and predicted_vs_true.png "
          f"in {Path(args.out) / 'predictions'}, the model in {Path(args.out) / 'hf-model'}")
