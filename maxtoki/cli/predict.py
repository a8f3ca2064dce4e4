"""``maxtoki predict time``, ``maxtoki generate`` and ``maxtoki embed``: ask a trained model."""

from __future__ import annotations

import sys

from maxtoki.cli.options import add_model_options, add_untrained_time_option, share


def add_commands(commands) -> None:
    predict = commands.add_parser("predict", help="ask a trained model")
    predict_commands = predict.add_subparsers(dest="predict_command", required=True, metavar="COMMAND")
    predict_time = predict_commands.add_parser("time", help="TimeBetweenCells: predicted time between cells")
    add_model_options(predict_time, "evaluation paragraphs (maxtoki data paragraphs --eval)", "output directory", 8)
    predict_time.add_argument("--train-data", help="training paragraphs, to fit the baselines on (default: "
                                                   "the evaluation data, cross-fitted for the linear one)")
    predict_time.add_argument("--interval", type=share, default=0.8, metavar="P",
                              help="nominal coverage of each prediction's interval, the central share P of the "
                                   "model's distribution over times (default 0.8)")
    predict_time.add_argument("--calibration-data", metavar="DIR",
                              help="evaluation paragraphs of other held-out cells (e.g. a validation split): the "
                                   "intervals are calibrated on them, and on the scored prompts that share no "
                                   "cell (donor) with each, to hold the truth P of the time")
    predict_time.add_argument("--baseline-columns", nargs="+", default=[], metavar="COL",
                              help="cell columns that make a cell's kind for the naive baseline (the most common "
                                   "time of training cells of the query's kind), e.g. cell_type sex")
    predict_time.add_argument("--donor-column", metavar="COL",
                              help="cell column naming each cell's donor, for scores per donor (default: the "
                                   "paragraphs' groups, when they were grouped by columns)")
    add_untrained_time_option(predict_time)
    predict_time.set_defaults(func=_run_predict_time, runs_model=True)

    generate = commands.add_parser("generate", help="NextCell: generate the cell expected after a time")
    add_model_options(generate, "evaluation paragraphs with NextCell prompts (--eval)",
                      "output directory (tokens.jsonl, generated_cells.h5ad, evaluation.json and .png)", 8)
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--max-new-tokens", type=int, default=4096)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--cells", metavar="DIR",
                          help="the paragraphs' cell shards, to judge the generated cells against (default: the "
                               "cells their manifest names; skipped with a note when those are not readable)")
    generate.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                          help="only generate: do not judge the generated cells against the real cells")
    add_untrained_time_option(generate)
    generate.set_defaults(func=_run_generate, runs_model=True)

    embed = commands.add_parser("embed", help="one vector per cell -> obsm['X_maxtoki'] of an .h5ad, one per gene "
                                              "-> varm['X_maxtoki']")
    add_model_options(embed, "cell shards, or an .h5ad (needs a HF directory and --medians)", "output .h5ad", 16)
    embed.add_argument("--medians", help="gene medians, to tokenize an .h5ad")
    embed.add_argument("--vocab", help="the model's vocabulary, to tokenize an .h5ad (default: the checkpoint "
                                       "directory's vocab.json)")
    embed.add_argument("--gene-id-column", metavar="COL")
    embed.add_argument("--allow-non-integer", action="store_true")
    embed.add_argument("--min-expression", type=float, default=0.0, metavar="X")
    embed.add_argument("--layer", type=int, default=-1, metavar="L",
                       help="hidden layer for cells and genes (0: token embeddings; default -1, the last)")
    embed.set_defaults(func=_run_embed, runs_model=True)


def _run_predict_time(args) -> None:
    from maxtoki.inference.predict_time import predict_time
    from maxtoki.pipeline import scores_table

    metrics = predict_time(args.checkpoint, args.data, args.out, args.train_data, args.batch_size, args.device,
                           args.interval, args.calibration_data, tuple(args.baseline_columns), args.donor_column,
                           args.allow_untrained_time)
    print(scores_table(metrics))
    print(f"(linear regressor {metrics['baseline_linear_fit']}); predictions.csv, metrics.json and "
          f"predicted_vs_true.png in {args.out}")


def _run_generate(args) -> None:
    from maxtoki.inference.generate import Sampling, generate

    sampling = Sampling(not args.sample, args.temperature, args.top_k, args.top_p, args.max_new_tokens, args.seed)
    result = generate(args.checkpoint, args.data, args.out, sampling, args.batch_size, args.device,
                      evaluate=args.evaluate, cells=args.cells, allow_untrained_time=args.allow_untrained_time)
    if result["warning"]:
        print(f"maxtoki: warning: {result['warning']}", file=sys.stderr)
    print(f"generated {result['cells']} cells -> {args.out}/tokens.jsonl and {args.out}/generated_cells.h5ad")
    summary = result["evaluation"]
    if summary is None:
        if args.evaluate:
            print(f"maxtoki: note: generated cells not judged: {result['not_evaluated']}", file=sys.stderr)
        return
    times = ", ".join(summary["reference_times"])
    print(f"Time of the generated cells, read from the {summary['neighbours']} nearest of "
          f"{summary['reference_cells']} real held-out cells (times {times}):")
    print(f"  {'':<36}{'accuracy':>9}{'MAE':>9}")
    for label, key in (("generated cell", "generated"), ("baseline: copy last context cell", "copy_last_context_cell"),
                       ("ceiling: real response cell", "real_response_cell")):
        print(f"  {label:<36}{summary['time'][key]['accuracy']:>9.2f}{summary['time'][key]['mae']:>9.1f}")
    print(f"  (chance: always the most common time, accuracy {summary['chance_accuracy']:.2f})")
    nearest, genes = summary["nearest_real_similarity"], summary["genes_per_cell"]
    print(f"Similarity to the nearest real cell (median; genes per cell): generated {nearest['generated']:.2f} "
          f"({genes['generated']:.0f}), copied context cell {nearest['copy_last_context_cell']:.2f}, real response "
          f"cell {nearest['real_response_cell']:.2f} ({genes['real_response_cell']:.0f})")
    singlets = summary["singlets"]
    print(f"Single cells, not averages: {singlets['generated']:.0%} of generated cells are classified as singlets "
          f"(controls: {singlets['real_held_out_cells']:.0%} of real held-out cells, "
          f"{singlets['simulated_doublets']:.0%} of simulated doublets)")
    print(f"evaluation.json and evaluation.png in {args.out}")


def _run_embed(args) -> None:
    from maxtoki.inference.embed import EMBEDDING_KEY, embed

    out = embed(args.checkpoint, args.data, args.out, medians=args.medians, vocab=args.vocab,
                gene_id_column=args.gene_id_column, allow_non_integer=args.allow_non_integer,
                min_expression=args.min_expression, batch_size=args.batch_size, device=args.device, layer=args.layer)
    print(f"wrote {out} with cell embeddings in obsm[{EMBEDDING_KEY!r}] and gene embeddings in varm[{EMBEDDING_KEY!r}] "
          f"(var['maxtoki_cells']: the cells each is averaged over); in scanpy: "
          f"sc.pp.neighbors(adata, use_rep={EMBEDDING_KEY!r})")
