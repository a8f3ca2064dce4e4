"""``maxtoki analyze age-acceleration`` and ``maxtoki analyze perturb``: analyses of a trained model."""

from __future__ import annotations

import argparse
import sys

from maxtoki.cli.options import add_model_options, add_untrained_time_option, share


def add_commands(commands) -> None:
    analyze = commands.add_parser("analyze", help="age acceleration and in-silico perturbation")
    analyze_commands = analyze.add_subparsers(dest="analyze_command", required=True, metavar="COMMAND")
    acceleration = analyze_commands.add_parser(
        "age-acceleration", help="do case cells read older than age-matched controls under a normal context?")
    _add_analysis_options(acceleration, "output directory (acceleration.json, pairs.csv, acceleration.png)")
    acceleration.add_argument("--condition-column", required=True, metavar="COL", help="e.g. condition or disease")
    acceleration.add_argument("--case", required=True, metavar="VALUE", help="the condition's value, e.g. disease")
    acceleration.add_argument("--control", required=True, metavar="VALUE", help="the controls' value, e.g. normal")
    acceleration.add_argument("--age-tolerance", type=float, default=0.0, metavar="T",
                              help="largest |age difference| of a case cell and its control (time-column units)")
    acceleration.add_argument("--pairs", type=int, default=400, help="case/control pairs (default 400)")
    acceleration.add_argument("--bootstrap", type=int, default=1000,
                              help="crossed resamples of case and control donors (default 1000)")
    acceleration.add_argument("--confidence", type=share, default=0.95)
    acceleration.add_argument("--train-data", nargs="+", default=[], metavar="DIR",
                              help="the paragraphs the model was trained on (e.g. paragraphs/train): control "
                                   "queries then come only from control donors the model did not train on "
                                   "(default: unknown, and the output says so)")
    acceleration.set_defaults(func=_run_age_acceleration, runs_model=True)
    perturbation = analyze_commands.add_parser(
        "perturb", help="delete, overexpress, inhibit or shift genes in query cells; rank genes by how far the "
                        "predicted time or the cell embedding moves")
    _add_analysis_options(perturbation, "output directory (effects.csv, shifts.csv, nulls.csv, perturb.json, "
                                        "perturb.png; contexts.csv for --readout time)", donor_required=False)
    genes = perturbation.add_mutually_exclusive_group()
    genes.add_argument("--genes", nargs="+", default=[], metavar="GENE",
                       help="Ensembl IDs to perturb; GENE+GENE[+GENE] perturbs up to three together")
    genes.add_argument("--top-genes", type=int, default=100, metavar="N",
                       help="perturb the N genes expressed in most query cells (default 100)")
    perturbation.add_argument("--modes", nargs="+", default=["delete", "overexpress"],
                              choices=["delete", "overexpress", "inhibit", "shift"],
                              help="delete; overexpress (to the top); inhibit (to the bottom); shift by "
                                   "--shift-ranks (default: delete overexpress)")
    perturbation.add_argument("--shift-ranks", nargs="+", type=int, default=[5], metavar="K",
                              help="ranks the shift mode moves a gene, positive towards the top (default 5)")
    perturbation.add_argument("--readout", choices=["time", "embedding"], default="time",
                              help="time: shift of the predicted time (stage-2 models); embedding: shift of the "
                                   "cell embedding, any model, stage 1 included (default time)")
    perturbation.add_argument("--start-state", metavar="COL=VALUE",
                              help="embedding read-out: the query cells' state, e.g. age_group=old")
    perturbation.add_argument("--goal-state", metavar="COL=VALUE",
                              help="embedding read-out: the state to move them towards, e.g. age_group=young; "
                                   "genes are then ranked by the goal-state shift")
    perturbation.add_argument("--state-cells", type=int, default=1000, metavar="N",
                              help="cells per state averaged into its centroid (default 1000)")
    perturbation.add_argument("--layer", type=int, default=-1, metavar="L",
                              help="embedding read-out: hidden layer (0: token embeddings; default -1, the last)")
    perturbation.add_argument("--write-embeddings", action="store_true",
                              help="embedding read-out: also write perturbed_embeddings.h5ad (obsm['X_maxtoki'])")
    perturbation.add_argument("--null-genes", type=int, default=20, metavar="N",
                              help="random genes perturbed per query cell and mode, matched on rank, for the "
                                   "p-values and FDR (default 20; 0: none)")
    perturbation.add_argument("--query-cells", type=int, default=100, metavar="N", help="cells to perturb")
    perturbation.add_argument("--contexts-per-cell", type=int, default=1, metavar="N",
                              help="time read-out: read every cell after N contexts from distinct donors and "
                                   "average the shifts (default 1)")
    perturbation.add_argument("--query-where", nargs="+", default=[], metavar="COL=VALUE",
                              help="perturb only cells with these values (e.g. condition=control)")
    perturbation.add_argument("--context-where", nargs="+", default=[], metavar="COL=VALUE",
                              help="draw context cells only among cells with these values")
    perturbation.add_argument("--next-cell", type=float, metavar="T",
                              help="also generate each perturbed cell's next cell T time units later (NextCell) "
                                   "and report how much it changed")
    perturbation.set_defaults(func=_run_perturb, runs_model=True)


def _add_analysis_options(parser: argparse.ArgumentParser, out_help: str, donor_required: bool = True) -> None:
    """Options both analyses share: the model, the cells and how contexts are drawn."""
    add_model_options(parser, "an .h5ad (with --medians) or cell shards (maxtoki data tokenize)", out_help, 64)
    parser.add_argument("--vocab", help="the model's vocabulary, to tokenize an .h5ad (default: the checkpoint "
                                        "directory's vocab.json)")
    parser.add_argument("--medians", help="the gene medians of the training data, to tokenize an .h5ad")
    parser.add_argument("--gene-id-column", metavar="COL")
    parser.add_argument("--allow-non-integer", action="store_true")
    parser.add_argument("--model-input-size", type=int, metavar="N",
                        help="tokens per cell when tokenizing an .h5ad, as for the training cells (default: the "
                             "model's context shared by the context and query cells)")
    parser.add_argument("--time-column", default="age", metavar="COL",
                        help="obs column with each cell's time (.h5ad; shards use their 'time')")
    parser.add_argument("--donor-column", required=donor_required, metavar="COL",
                        help="the trajectory a cell belongs to, e.g. donor (contexts come from one donor)"
                             + ("" if donor_required else "; needed for the time read-out"))
    parser.add_argument("--match-columns", nargs="+", default=[], metavar="COL",
                        help="context and query cells agree on these columns (e.g. cell_type)")
    parser.add_argument("--context-cells", type=int, default=2, metavar="N",
                        help="context cells at distinct times before the query (default 2)")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="S",
                        help="time tokens per time-column unit, as given to `data paragraphs` (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    add_untrained_time_option(parser)


def _analysis_inputs(args, columns: list[str], reads_time: bool = True):
    """The model and the cells of an analysis command, checked against each other; without ``reads_time``
    (the embedding read-out) cells need no time and no donor, and are as long as the model's context."""
    from maxtoki.analysis.cells import load_cells
    from maxtoki.analysis.prompts import ContextOptions
    from maxtoki.inference.loading import load_model, model_vocabulary

    h5ad = str(args.data).endswith(".h5ad")
    vocab = model_vocabulary(args.checkpoint, args.vocab) if h5ad else None
    model = load_model(args.checkpoint, vocab)[0] if vocab else None
    shares = args.context_cells + 1 if reads_time else 1  # cells a prompt holds
    cells = load_cells(args.data, [args.donor_column, *args.match_columns, *columns],
                       time_column=args.time_column if reads_time else None,
                       vocab=vocab, medians=args.medians, gene_id_column=args.gene_id_column,
                       allow_non_integer=args.allow_non_integer,
                       model_input_size=args.model_input_size or (
                           model.config.max_position_embeddings // shares if model else 4096))
    model = model or load_model(args.checkpoint, cells.vocab)[0]
    if not (reads_time and args.donor_column):
        return model, cells, None
    return model, cells, ContextOptions(args.donor_column, tuple(args.match_columns), args.context_cells,
                                        args.time_scale)


def _warn(warning: str | None) -> None:
    if warning:
        print(f"maxtoki: warning: {warning}", file=sys.stderr)


def _run_age_acceleration(args) -> None:
    from maxtoki.analysis.age_acceleration import AccelerationOptions, age_acceleration
    from maxtoki.analysis.trained_donors import trained_donors

    model, cells, context = _analysis_inputs(args, [args.condition_column])
    options = AccelerationOptions(args.condition_column, args.case, args.control, args.age_tolerance, args.pairs,
                                  args.bootstrap, args.confidence, args.seed)
    trained = trained_donors(args.train_data, args.donor_column, cells) if args.train_data else None
    summary = age_acceleration(model, cells, args.out, context, options, args.batch_size, args.device, trained,
                               args.allow_untrained_time)
    _warn(summary["warning"])
    low, high = summary["calibrated_interval"]
    raw_low, raw_high = summary["acceleration_interval"]
    if trained is None:
        seen = "whether the model trained on them is unknown (give --train-data)"
    else:
        seen = (f"{summary['control_donors_trained']} of them trained on; "
                f"{summary['control_donors_left_out_as_trained']} trained control donors left out")
    print(f"{args.case} vs age-matched {args.control} ({summary['pairs']} pairs, {summary['case_donors']} case "
          f"donors, control queries from {summary['control_donors']} donors, {seen}): age acceleration "
          f"{summary['calibrated']:+.2f} time units calibrated [{low:+.2f}, {high:+.2f}], "
          f"{summary['acceleration']:+.2f} raw [{raw_low:+.2f}, {raw_high:+.2f}] ({args.confidence:.0%} intervals, "
          f"crossed bootstrap over case and control donors); acceleration.json, pairs.csv and acceleration.png in "
          f"{args.out}")


def _run_perturb(args) -> None:
    from maxtoki.analysis.perturb import PerturbOptions, perturb
    from maxtoki.data.paragraphs.splits import parse_holdout_values
    from maxtoki.inference.loading import untrained_time_warning

    query_where, context_where = parse_holdout_values(args.query_where), parse_holdout_values(args.context_where)
    states = [parse_holdout_values([s])[0] if s else None for s in (args.start_state, args.goal_state)]
    columns = [c for c, _ in [*query_where, *context_where, *[s for s in states if s]]]
    reads_time = args.readout == "time" or args.next_cell is not None
    model, cells, context = _analysis_inputs(args, columns, reads_time)
    options = PerturbOptions(tuple(args.genes), args.top_genes, tuple(args.modes), tuple(args.shift_ranks),
                             args.readout, args.query_cells, tuple(query_where), tuple(context_where), *states,
                             args.state_cells, args.null_genes, args.layer, args.write_embeddings, args.next_cell,
                             args.seed, contexts_per_cell=args.contexts_per_cell)
    effects = perturb(model, cells, args.out, context, options, args.batch_size, args.device,
                      args.allow_untrained_time)
    if reads_time:
        _warn(untrained_time_warning(model, args.allow_untrained_time))
    if effects["p_value"].isna().all():
        _warn("no null perturbations (--null-genes 0, or the panel holds every gene of the query cells): no p-values")
    top = effects.iloc[0]
    significant = int((effects["fdr"] < 0.05).sum()) if "fdr" in effects else 0
    unit = "the predicted time" if args.readout == "time" else \
        ("the goal-state shift" if args.goal_state else "the cosine shift of the embedding")
    print(f"{effects['gene'].nunique()} genes x {effects['mode'].nunique()} perturbations, {significant} at FDR "
          f"< 0.05; strongest: {top['mode']} {top['gene']} moves {unit} by {top['mean_shift']:+.3g} over "
          f"{top['cells']} cells; effects.csv, shifts.csv and perturb.png in {args.out}")
