"""``maxtoki data ...``: prepare training data (medians, vocab, tokenize, paragraphs, queries, simulate, inspect)."""

from __future__ import annotations

import sys
from pathlib import Path

from maxtoki.cli.options import add_reading_options, runs_with_config
from maxtoki.errors import MaxtokiError


def add_commands(commands) -> None:
    data = commands.add_parser("data", help="prepare training data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    medians = data_commands.add_parser("medians", help="corpus-wide gene medians -> JSON")
    medians.add_argument("inputs", nargs="*", metavar="FILES", help=".h5ad / 10x .h5 files or directories")
    medians.add_argument("--out", required=True, help="output JSON (Ensembl ID -> median)")
    add_reading_options(medians)
    runs_with_config(medians, _run_medians)

    vocab = data_commands.add_parser("vocab", help="token dictionary from gene medians")
    vocab.add_argument("--medians", required=True, help="gene medians JSON")
    vocab.add_argument("--out", required=True, help="output vocabulary JSON")
    vocab.add_argument("--max-time", type=int, default=1500, metavar="T",
                       help="numeric time tokens -T..T-1 (default 1500, as released)")
    runs_with_config(vocab, _run_vocab)

    released = data_commands.add_parser(
        "released", help="the released MaxToki vocabulary (with time tokens) and gene medians, bundled")
    released.add_argument("--out", required=True, help="output directory (vocab.json, medians.json, ATTRIBUTION.md)")
    runs_with_config(released, _run_released)

    tokenize = data_commands.add_parser("tokenize", help="rank-value-encode cells -> MDS shards")
    tokenize.add_argument("inputs", nargs="*", metavar="FILES", help=".h5ad / 10x .h5 files or directories")
    tokenize.add_argument("--vocab", required=True, help="vocabulary JSON or Geneformer pickle")
    tokenize.add_argument("--medians", required=True, help="gene medians JSON")
    tokenize.add_argument("--out", required=True, help="output directory or s3:// URI")
    add_reading_options(tokenize)
    tokenize.add_argument("--time-column", metavar="COL", help="numeric obs column stored as `time`")
    tokenize.add_argument("--group-columns", nargs="+", default=[], metavar="COL",
                          help="obs columns joined with '|' and stored as `group` (e.g. donor)")
    tokenize.add_argument("--keep-obs", nargs="+", default=[], metavar="COL", help="obs columns to keep (as text)")
    tokenize.add_argument("--model-input-size", type=int, default=4096, metavar="N",
                          help="tokens per cell including <bos>/<eos> (default 4096)")
    tokenize.add_argument("--compression", choices=["zstd", "zstd:7", "gz", "snappy"],
                          help="shard compression (default none)")
    tokenize.add_argument("--overwrite", action="store_true", help="replace an existing output")
    runs_with_config(tokenize, _run_tokenize)

    paragraphs = data_commands.add_parser("paragraphs", help="cell paragraphs with time tokens -> MDS shards")
    paragraphs.add_argument("cells", nargs="?", metavar="CELLS", help="cell shards (directory or s3:// URI)")
    paragraphs.add_argument("--out", required=True, help="output directory or s3:// URI")
    paragraphs.add_argument("--vocab", help="vocabulary (default: the one named in the cells' manifest)")
    paragraphs.add_argument("--num-examples", type=int, default=10_000, metavar="N", help="examples in all")
    paragraphs.add_argument("--seed", type=int, default=0, metavar="S")
    paragraphs.add_argument("--min-timepoints", type=int, default=3, metavar="N")
    paragraphs.add_argument("--max-timepoints", type=int, default=4, metavar="N")
    paragraphs.add_argument("--task-ratio", type=float, default=0.5, metavar="P",
                            help="share of TimeBetweenCells examples (the rest are NextCell)")
    paragraphs.add_argument("--balance", type=float, default=0.0, metavar="B",
                            help="groups drawn with probability ~ size ** (1 - B): 0 by size, 1 uniformly")
    paragraphs.add_argument("--no-negative-timelapses", dest="negative_timelapses", action="store_false",
                            help="keep the cells of an example in time order (query last)")
    paragraphs.add_argument("--max-seq-len", type=int, default=16_384, metavar="N",
                            help="longer examples lose genes from the end of the first cell")
    paragraphs.add_argument("--time-scale", type=float, default=1.0, metavar="S",
                            help="time units = time * S, rounded half away from zero")
    paragraphs.add_argument("--clip", action="store_true", help="clip timelapses to the vocabulary's range")
    paragraphs.add_argument("--eval", dest="eval_layout", action="store_true",
                            help="evaluation layout: prompt_ids and response_ids kept apart")
    paragraphs.add_argument("--group-columns", nargs="+", default=[], metavar="COL",
                            help="trajectory groups from these cell columns (default: `group`, else dataset)")
    paragraphs.add_argument("--split", metavar="SPEC", help="e.g. train=0.8,val=0.1,test=0.1 (whole groups)")
    paragraphs.add_argument("--holdout-groups", nargs="+", default=[], metavar="GROUP")
    paragraphs.add_argument("--holdout-values", nargs="+", default=[], metavar="COL=VALUE",
                            help="hold out every cell with this value (e.g. an unseen cell type)")
    paragraphs.add_argument("--holdout-fraction", type=float, default=0.0, metavar="F",
                            help="hold out this share of the cells of every group and time (one time course)")
    paragraphs.add_argument("--validation-fraction", type=float, default=0.0, metavar="F",
                            help="deal this share of the cells of every group and time that are not held out into "
                                 "a validation split (to calibrate predict time's intervals on)")
    paragraphs.add_argument("--blueprint", metavar="NPZ", help="rebuild exactly from a saved blueprint")
    paragraphs.add_argument("--workers", type=int, default=1, metavar="N")
    paragraphs.add_argument("--overwrite", action="store_true", help="replace an existing output")
    runs_with_config(paragraphs, _run_paragraphs)

    queries = data_commands.add_parser("queries", help="swap the query cells of evaluation paragraphs")
    queries.add_argument("paragraphs", nargs="?", metavar="PARAGRAPHS", help="evaluation paragraphs (--eval)")
    queries.add_argument("--cells", required=True, help="cell shards to draw the new query cells from")
    queries.add_argument("--out", required=True, help="output directory or s3:// URI")
    queries.add_argument("--match-time-tolerance", type=float, default=0.0, metavar="T",
                         help="largest |time difference| to the original query cell, in input time (default 0)")
    queries.add_argument("--match-columns", nargs="+", default=[], metavar="COL",
                         help="the new query cell must agree on these columns (e.g. cell_type)")
    queries.add_argument("--where", nargs="+", default=[], metavar="COL=VALUE",
                         help="draw new query cells only among cells with these values (e.g. condition=disease)")
    queries.add_argument("--seed", type=int, default=0)
    queries.add_argument("--overwrite", action="store_true")
    runs_with_config(queries, _run_queries)

    simulate = data_commands.add_parser("simulate", help="synthetic donors over age -> .h5ad with known truth")
    simulate.add_argument("--out", required=True, help="output .h5ad")
    for name, default, text in (("donors", 20, "donors"), ("ages-per-donor", 4, "ages sampled per donor"),
                                ("cells-per-sample", 50, "cells per donor and age"), ("genes", 2000, "genes"),
                                ("programs", 8, "age-dependent gene programs"), ("cell-types", 2, "cell types"),
                                ("min-age", 240, "youngest age"), ("max-age", 960, "oldest age"),
                                ("disease-donors", 0, "donors of the 'disease' condition"),
                                ("drivers", 20, "genes marked as age drivers"), ("seed", 0, "random seed")):
        simulate.add_argument(f"--{name}", type=int, default=default, help=f"{text} (default {default})")
    simulate.add_argument("--age-acceleration", type=float, default=0.0, metavar="A",
                          help="disease donors' expression looks A time units older (default 0)")
    runs_with_config(simulate, _run_simulate)

    inspect = data_commands.add_parser("inspect", help="summarise a directory of cell shards")
    inspect.add_argument("path", help="shard directory (with manifest.json)")
    inspect.add_argument("--vocab", help="vocabulary to decode tokens (default: the one in the manifest)")
    inspect.add_argument("--cells", type=int, default=3, help="example cells to show")
    inspect.set_defaults(func=_run_inspect)


def _read_options(args):
    from maxtoki.data.cells.sources import ReadOptions

    return ReadOptions(args.gene_id_column, args.layer, args.use_raw)


def _require_inputs(args) -> None:
    if not args.inputs:
        raise MaxtokiError("give at least one input file or directory")
    if args.workers < 1:
        raise MaxtokiError("--workers must be at least 1")


def _run_medians(args) -> None:
    from maxtoki.data.cells.medians import compute_medians, write_medians

    _require_inputs(args)
    medians, summary = compute_medians(args.inputs, read=_read_options(args), gene_mapping_path=args.gene_mapping,
                                       allow_non_integer=args.allow_non_integer,
                                       min_expression=args.min_expression, workers=args.workers,
                                       chunk_size=args.chunk_size)
    if not medians:
        raise MaxtokiError("no cell had any expressed gene; nothing to compute medians from")
    write_medians(medians, args.out)
    print(f"medians of {summary['genes']:,} genes from {summary['cells_used']:,} of {summary['cells_read']:,} "
          f"cells in {len(summary['files'])} file(s) -> {args.out}")


def _run_vocab(args) -> None:
    from maxtoki.data.cells.tokenize import load_medians
    from maxtoki.vocab import Vocabulary

    from maxtoki.released import released_medians

    medians = load_medians(args.medians)
    vocab = Vocabulary.build(medians.keys(), max_time=args.max_time)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    vocab.save(args.out)
    lo, hi = vocab.time_range
    print(f"vocabulary of {len(vocab):,} tokens ({int(vocab.is_gene.sum()):,} genes, time tokens {lo}..{hi}) "
          f"-> {args.out}")
    if medians == released_medians():
        print("maxtoki: note: these are the released MaxToki medians; a vocabulary of all their genes does not fit "
              "the released weights: `maxtoki data released --out DIR` writes the one that does", file=sys.stderr)


def _run_released(args) -> None:
    from maxtoki.released import write_released

    from maxtoki.vocab import Vocabulary

    paths = write_released(args.out)
    vocab = Vocabulary.load(paths["vocab"])
    print(f"the released MaxToki vocabulary, {len(vocab):,} tokens ({int(vocab.is_gene.sum()):,} genes at their "
          f"released ids 4..{int(vocab.gene_ids[-1]):,}, time tokens -1500..1499 at "
          f"{vocab['-1500']:,}..{vocab['1499']:,}, <boq>={vocab['<boq>']:,}, <eoq>={vocab['<eoq>']:,}) -> "
          f"{paths['vocab']}; the released gene medians -> {paths['medians']} (Apache 2.0: {paths['attribution']})")


def _run_tokenize(args) -> None:
    from maxtoki.data.cells.tokenize import TokenizeOptions, tokenize_files

    _require_inputs(args)
    options = TokenizeOptions(_read_options(args), args.time_column, tuple(args.group_columns),
                              tuple(args.keep_obs), args.model_input_size, args.allow_non_integer, args.chunk_size,
                              args.min_expression)
    manifest = tokenize_files(args.inputs, args.vocab, args.medians, args.out, options=options,
                              gene_mapping_path=args.gene_mapping, workers=args.workers, overwrite=args.overwrite,
                              compression=args.compression)
    cells = manifest["cells"]
    dropped = ", ".join(f"{n:,} {reason}" for reason, n in cells["dropped"].items()) or "none"
    print(f"wrote {cells['written']:,} of {cells['read']:,} cells ({manifest['tokens']:,} tokens) to {args.out}; "
          f"dropped: {dropped}")


def _run_paragraphs(args) -> None:
    from maxtoki.data.paragraphs.build import build_paragraphs
    from maxtoki.data.paragraphs.sampling import ParagraphOptions
    from maxtoki.data.paragraphs.splits import parse_holdout_values, parse_split

    if not args.cells:
        raise MaxtokiError("give the cell shards (the output of `maxtoki data tokenize`)")
    options = ParagraphOptions(args.num_examples, args.seed, args.min_timepoints, args.max_timepoints,
                               args.task_ratio, args.balance, args.negative_timelapses, args.max_seq_len,
                               args.time_scale, args.clip, args.eval_layout)
    manifests = build_paragraphs(args.cells, args.vocab, args.out, options, group_columns=tuple(args.group_columns),
                                 split=parse_split(args.split) if args.split else None,
                                 holdout_groups=tuple(args.holdout_groups),
                                 holdout_values=tuple(parse_holdout_values(args.holdout_values)),
                                 holdout_fraction=args.holdout_fraction,
                                 validation_fraction=args.validation_fraction, blueprint_path=args.blueprint,
                                 workers=args.workers, overwrite=args.overwrite)
    for name, manifest in manifests.items():
        where = args.out if name == "all" else f"{args.out.rstrip('/')}/{name}"
        counts = manifest["counts"]
        tasks = counts.get("tasks", {})
        print(f"wrote {counts['examples']:,} examples ({manifest['tokens']:,} tokens; "
              f"{tasks.get('TimeBetweenCells', '?')} TimeBetweenCells, {tasks.get('NextCell', '?')} NextCell"
              f"{', from ' + str(counts['groups_used']) + ' groups' if 'groups_used' in counts else ''}) to {where}")


def _run_queries(args) -> None:
    from maxtoki.data.paragraphs.queries import build_queries
    from maxtoki.data.paragraphs.splits import parse_holdout_values

    if not args.paragraphs:
        raise MaxtokiError("give the evaluation paragraphs (made with `maxtoki data paragraphs --eval`)")
    manifest = build_queries(args.paragraphs, args.cells, args.out, match_time_tolerance=args.match_time_tolerance,
                             match_columns=tuple(args.match_columns), where=tuple(parse_holdout_values(args.where)),
                             seed=args.seed, overwrite=args.overwrite)
    counts = manifest["counts"]
    skipped = ", ".join(f"{n:,} {k}" for k, n in counts.items() if k != "written") or "none"
    print(f"wrote {counts['written']:,} query paragraphs to {args.out}; skipped: {skipped}")


def _run_simulate(args) -> None:
    from maxtoki.data.simulate import SimulationOptions, simulate

    options = SimulationOptions(donors=args.donors, ages_per_donor=args.ages_per_donor,
                                cells_per_sample=args.cells_per_sample, genes=args.genes, programs=args.programs,
                                cell_types=args.cell_types, min_age=args.min_age, max_age=args.max_age,
                                disease_donors=args.disease_donors, age_acceleration=args.age_acceleration,
                                drivers=args.drivers, seed=args.seed)
    summary = simulate(args.out, options)
    print(f"simulated {summary['cells']:,} cells of {summary['donors']} donors ({summary['disease_donors']} with "
          f"the disease condition), {summary['genes']:,} genes -> {args.out}")


def _run_inspect(args) -> None:
    from maxtoki.data.shards.inspect import describe_shards

    print(describe_shards(args.path, vocab_path=args.vocab, n_examples=args.cells))
