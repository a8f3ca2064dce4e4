"""The ``maxtoki`` command. Thin: parses arguments and calls library functions.

Imports are lazy so that data commands start fast and never load torch or Composer.
Every data command also takes ``--config FILE.yaml`` whose keys are option names; options given
on the command line win over the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maxtoki.errors import MaxtokiError


def _add_reading_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading inputs")
    group.add_argument("--gene-id-column", metavar="COL",
                       help="var column holding gene IDs (default: the var index; 10x files: 'id' or 'name')")
    group.add_argument("--gene-mapping", metavar="CSV",
                       help="symbol -> Ensembl ID table (two columns, e.g. GENCODE gene_id,gene_name)")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--layer", metavar="NAME", help="read counts from adata.layers[NAME] instead of X")
    source.add_argument("--use-raw", action="store_true", help="read counts from adata.raw")
    group.add_argument("--allow-non-integer", action="store_true",
                       help="accept non-integer values (FPKM/TPM); by default they are rejected as normalized")
    group.add_argument("--min-expression", type=float, default=0.0, metavar="X",
                       help="treat values below X as zero (estimation noise in FPKM/TPM data; default 0)")
    group.add_argument("--chunk-size", type=int, default=2048, metavar="N", help="cells read at a time (memory)")
    group.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes")


def _add_model_options(parser: argparse.ArgumentParser, data_help: str, out_help: str, batch_size: int) -> None:
    """Options every inference command shares: which model, which data, where to, and how."""
    parser.add_argument("--checkpoint", required=True, help="Composer checkpoint (local or s3://) or HF directory")
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def _add_analysis_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    """Options both analyses share: the model, the cells and how contexts are drawn."""
    _add_model_options(parser, "an .h5ad (with --medians) or cell shards (maxtoki data tokenize)", out_help, 64)
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
    parser.add_argument("--donor-column", required=True, metavar="COL",
                        help="the trajectory a cell belongs to, e.g. donor (contexts come from one donor)")
    parser.add_argument("--match-columns", nargs="+", default=[], metavar="COL",
                        help="context and query cells agree on these columns (e.g. cell_type)")
    parser.add_argument("--context-cells", type=int, default=2, metavar="N",
                        help="context cells at distinct times before the query (default 2)")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="S",
                        help="time tokens per time-column unit, as given to `data paragraphs` (default 1)")
    parser.add_argument("--seed", type=int, default=0)


def _share(text: str) -> float:
    """A share strictly between 0 and 1 (a coverage or confidence)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a share between 0 and 1, such as 0.8")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maxtoki", description="Temporal single-cell foundation model toolkit.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser("predict", help="ask a trained model")
    predict_commands = predict.add_subparsers(dest="predict_command", required=True, metavar="COMMAND")
    predict_time = predict_commands.add_parser("time", help="TimeBetweenCells: predicted time between cells")
    _add_model_options(predict_time, "evaluation paragraphs (maxtoki data paragraphs --eval)", "output directory", 8)
    predict_time.add_argument("--train-data", help="training paragraphs, to fit the baselines on (default: "
                                                   "the evaluation data, cross-fitted for the linear one)")
    predict_time.add_argument("--interval", type=_share, default=0.8, metavar="P",
                              help="nominal coverage of each prediction's interval, the central share P of the "
                                   "model's distribution over times (default 0.8)")
    predict_time.add_argument("--calibration-data", metavar="DIR",
                              help="evaluation paragraphs of other held-out cells (e.g. a validation split): the "
                                   "intervals are calibrated on them to hold the truth P of the time")
    predict_time.add_argument("--baseline-columns", nargs="+", default=[], metavar="COL",
                              help="cell columns that make a cell's kind for the naive baseline (the most common "
                                   "time of training cells of the query's kind), e.g. cell_type sex")
    predict_time.add_argument("--donor-column", metavar="COL",
                              help="cell column naming each cell's donor, for scores per donor (default: the "
                                   "paragraphs' groups, when they were grouped by columns)")
    predict_time.set_defaults(handler=_run_predict_time)

    generate = commands.add_parser("generate", help="NextCell: generate the cell expected after a time")
    _add_model_options(generate, "evaluation paragraphs with NextCell prompts (--eval)",
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
    generate.set_defaults(handler=_run_generate)

    embed = commands.add_parser("embed", help="one vector per cell -> obsm['X_maxtoki'] of an .h5ad")
    _add_model_options(embed, "cell shards, or an .h5ad (needs a HF directory and --medians)", "output .h5ad", 16)
    embed.add_argument("--medians", help="gene medians, to tokenize an .h5ad")
    embed.add_argument("--vocab", help="the model's vocabulary, to tokenize an .h5ad (default: the checkpoint "
                                       "directory's vocab.json)")
    embed.add_argument("--gene-id-column", metavar="COL")
    embed.add_argument("--allow-non-integer", action="store_true")
    embed.add_argument("--min-expression", type=float, default=0.0, metavar="X")
    embed.set_defaults(handler=_run_embed)

    export = commands.add_parser("export-hf", help="Composer checkpoint -> Hugging Face LlamaForCausalLM directory")
    export.add_argument("--checkpoint", required=True, help="Composer checkpoint (.pt), local or s3://")
    export.add_argument("--vocab", required=True, help="the vocabulary the model was trained with")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument("--time-unit", default="unspecified", help="what one time token means, e.g. months")
    export.set_defaults(handler=_run_export)

    curves = commands.add_parser("plot-run", help="loss and evaluation curves of a training run (wandb directory)")
    curves.add_argument("run", metavar="RUN", help="wandb/offline-run-* directory, or the wandb/ folder (latest run)")
    curves.add_argument("--out", required=True, help="PNG file; the numbers go beside it as CSV")
    curves.set_defaults(handler=_run_plot_run)

    imported = commands.add_parser("import-hf", help="LlamaForCausalLM directory (e.g. released weights) -> MaxToki")
    imported.add_argument("source", metavar="HF_DIR", help="a LlamaForCausalLM directory (save_pretrained)")
    imported.add_argument("--vocab", help="its token dictionary, JSON or pickle (default: one inside HF_DIR)")
    imported.add_argument("--out", required=True, help="output directory")
    imported.add_argument("--time-unit", default="months", help="what one time token means (released: months)")
    imported.add_argument("--label-scalar", type=float, default=200.0, help="TimeBetweenCells read-out scale")
    imported.add_argument("--additive-penalty", type=float, default=10.0)
    imported.add_argument("--timelapse-loss", choices=("numeric", "cross_entropy"), default="numeric")
    imported.set_defaults(handler=_run_import)

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
    acceleration.add_argument("--confidence", type=_share, default=0.95)
    acceleration.add_argument("--train-data", nargs="+", default=[], metavar="DIR",
                              help="the paragraphs the model was trained on (e.g. paragraphs/train): control "
                                   "queries then come only from control donors the model did not train on "
                                   "(default: unknown, and the output says so)")
    acceleration.set_defaults(handler=_run_age_acceleration)
    perturbation = analyze_commands.add_parser(
        "perturb", help="delete or overexpress genes in query cells; rank genes by the shift of predicted time")
    _add_analysis_options(perturbation,
                          "output directory (effects.csv, shifts.csv, contexts.csv, perturb.json, perturb.png)")
    genes = perturbation.add_mutually_exclusive_group()
    genes.add_argument("--genes", nargs="+", default=[], metavar="GENE", help="Ensembl IDs to perturb")
    genes.add_argument("--top-genes", type=int, default=100, metavar="N",
                       help="perturb the N genes expressed in most query cells (default 100)")
    perturbation.add_argument("--modes", nargs="+", default=["delete", "overexpress"],
                              choices=["delete", "overexpress"])
    perturbation.add_argument("--query-cells", type=int, default=100, metavar="N", help="cells to perturb")
    perturbation.add_argument("--contexts-per-cell", type=int, default=1, metavar="N",
                              help="read every cell after N contexts from distinct donors and average the shifts "
                                   "(default 1)")
    perturbation.add_argument("--query-where", nargs="+", default=[], metavar="COL=VALUE",
                              help="perturb only cells with these values (e.g. condition=control)")
    perturbation.add_argument("--context-where", nargs="+", default=[], metavar="COL=VALUE",
                              help="draw context cells only among cells with these values")
    perturbation.add_argument("--next-cell", type=float, metavar="T",
                              help="also generate each perturbed cell's next cell T time units later (NextCell) "
                                   "and report how much it changed")
    perturbation.set_defaults(handler=_run_perturb)

    pipeline = commands.add_parser(
        "pipeline", help="one time course .h5ad -> trained model and its held-out scores, every step in one command")
    pipeline.add_argument("data", metavar="DATA", help="an .h5ad with a time column (counts, or FPKM/TPM with "
                                                       "--allow-non-integer)")
    pipeline.add_argument("--time-column", required=True, metavar="COL", help="numeric obs column: each cell's time")
    pipeline.add_argument("--out", required=True, help="output directory")
    _add_reading_options(pipeline)
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
    pipeline.add_argument("--cell-length", type=int, default=256, metavar="N",
                          help="tokens per cell: its N-2 top-ranked genes (default 256; longer cells see more "
                               "genes and train slower)")
    pipeline.add_argument("--model-size", default="tiny", help="tiny (CPU), 217m or 1b (GPU) (default tiny)")
    pipeline.add_argument("--examples", type=int, default=4000, metavar="N", help="stage-2 training examples")
    pipeline.add_argument("--pretrain-batches", type=int, default=200, metavar="N", help="stage-1 batches (200)")
    pipeline.add_argument("--temporal-batches", type=int, default=1000, metavar="N", help="stage-2 batches (1000)")
    pipeline.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                          help="recipe keys for both stages, e.g. device_train_microbatch_size=4")
    pipeline.add_argument("--config", metavar="YAML", help="options from a YAML file")
    pipeline.set_defaults(handler=_run_pipeline)

    data = commands.add_parser("data", help="prepare training data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    medians = data_commands.add_parser("medians", help="corpus-wide gene medians -> JSON")
    medians.add_argument("inputs", nargs="*", metavar="FILES", help=".h5ad / 10x .h5 files or directories")
    medians.add_argument("--out", required=True, help="output JSON (Ensembl ID -> median)")
    _add_reading_options(medians)
    medians.add_argument("--config", metavar="YAML", help="options from a YAML file")
    medians.set_defaults(handler=_run_medians)

    vocab = data_commands.add_parser("vocab", help="token dictionary from gene medians")
    vocab.add_argument("--medians", required=True, help="gene medians JSON")
    vocab.add_argument("--out", required=True, help="output vocabulary JSON")
    vocab.add_argument("--max-time", type=int, default=1500, metavar="T",
                       help="numeric time tokens -T..T-1 (default 1500, as released)")
    vocab.add_argument("--config", metavar="YAML", help="options from a YAML file")
    vocab.set_defaults(handler=_run_vocab)

    tokenize = data_commands.add_parser("tokenize", help="rank-value-encode cells -> MDS shards")
    tokenize.add_argument("inputs", nargs="*", metavar="FILES", help=".h5ad / 10x .h5 files or directories")
    tokenize.add_argument("--vocab", required=True, help="vocabulary JSON or Geneformer pickle")
    tokenize.add_argument("--medians", required=True, help="gene medians JSON")
    tokenize.add_argument("--out", required=True, help="output directory or s3:// URI")
    _add_reading_options(tokenize)
    tokenize.add_argument("--time-column", metavar="COL", help="numeric obs column stored as `time`")
    tokenize.add_argument("--group-columns", nargs="+", default=[], metavar="COL",
                          help="obs columns joined with '|' and stored as `group` (e.g. donor)")
    tokenize.add_argument("--keep-obs", nargs="+", default=[], metavar="COL", help="obs columns to keep (as text)")
    tokenize.add_argument("--model-input-size", type=int, default=4096, metavar="N",
                          help="tokens per cell including <bos>/<eos> (default 4096)")
    tokenize.add_argument("--compression", choices=["zstd", "zstd:7", "gz", "snappy"],
                          help="shard compression (default none)")
    tokenize.add_argument("--overwrite", action="store_true", help="replace an existing output")
    tokenize.add_argument("--config", metavar="YAML", help="options from a YAML file")
    tokenize.set_defaults(handler=_run_tokenize)

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
    paragraphs.add_argument("--config", metavar="YAML", help="options from a YAML file")
    paragraphs.set_defaults(handler=_run_paragraphs)

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
    queries.add_argument("--config", metavar="YAML", help="options from a YAML file")
    queries.set_defaults(handler=_run_queries)

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
    simulate.add_argument("--config", metavar="YAML", help="options from a YAML file")
    simulate.set_defaults(handler=_run_simulate)

    inspect = data_commands.add_parser("inspect", help="summarise a directory of cell shards")
    inspect.add_argument("path", help="shard directory (with manifest.json)")
    inspect.add_argument("--vocab", help="vocabulary to decode tokens (default: the one in the manifest)")
    inspect.add_argument("--cells", type=int, default=3, help="example cells to show")
    inspect.set_defaults(handler=_run_inspect)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maxtoki")
    except PackageNotFoundError:
        return "unknown"


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options from ``--config FILE.yaml`` become defaults; the command line wins over them."""
    config_path = _option_value(argv, "--config")
    if config_path is None:
        return parser.parse_args(argv)
    import yaml

    try:
        config = yaml.safe_load(Path(config_path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MaxtokiError(f"{config_path}: cannot read the config ({exc})") from None
    if not isinstance(config, dict):
        raise MaxtokiError(f"{config_path}: a config must be a mapping of option names to values")
    command = _command_parser(parser, argv)
    known = {action.dest for action in command._actions}
    defaults = {}
    for key, value in config.items():
        dest = str(key).replace("-", "_")
        if dest not in known or dest in ("config", "help"):
            raise MaxtokiError(f"{config_path}: unknown option {key!r} for this command")
        defaults[dest] = value
    command.set_defaults(**defaults)
    for action in command._actions:  # required options may come from the file
        if action.dest in defaults:
            action.required = False
    args = parser.parse_args(argv)
    if getattr(args, "inputs", None) == [] and "inputs" in defaults:
        value = defaults["inputs"]
        args.inputs = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return args


def _option_value(argv: list[str], option: str) -> str | None:
    for i, token in enumerate(argv):
        if token == option and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(option + "="):
            return token.split("=", 1)[1]
    return None


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that the leading command words of ``argv`` select."""
    current = parser
    for token in argv:
        subparsers = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or token not in subparsers[0].choices:
            break
        current = subparsers[0].choices[token]
    return current


def _read_options(args):
    from maxtoki.data.sources import ReadOptions

    return ReadOptions(args.gene_id_column, args.layer, args.use_raw)


def _require_inputs(args) -> None:
    if not args.inputs:
        raise MaxtokiError("give at least one input file or directory")
    if args.workers < 1:
        raise MaxtokiError("--workers must be at least 1")


def _run_medians(args) -> None:
    from maxtoki.data.medians import compute_medians, write_medians

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
    from maxtoki.data.tokenize import load_medians
    from maxtoki.vocab import Vocabulary

    vocab = Vocabulary.build(load_medians(args.medians).keys(), max_time=args.max_time)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    vocab.save(args.out)
    lo, hi = vocab.time_range
    print(f"vocabulary of {len(vocab):,} tokens ({int(vocab.is_gene.sum()):,} genes, time tokens {lo}..{hi}) "
          f"-> {args.out}")


def _run_tokenize(args) -> None:
    from maxtoki.data.tokenize import TokenizeOptions, tokenize_files

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
    from maxtoki.data.paragraph_build import build_paragraphs
    from maxtoki.data.paragraphs import ParagraphOptions
    from maxtoki.data.splits import parse_holdout_values, parse_split

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
    from maxtoki.data.queries import build_queries
    from maxtoki.data.splits import parse_holdout_values

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


def _run_pipeline(args) -> None:
    from maxtoki.pipeline import PipelineOptions, run_pipeline, scores_table

    if args.workers < 1:
        raise MaxtokiError("--workers must be at least 1")
    options = PipelineOptions(args.time_column, tuple(args.group_columns), args.time_scale, args.holdout_fraction,
                              tuple(args.holdout_groups), args.split, args.seed, args.workers, args.gene_id_column,
                              args.gene_mapping, args.layer, args.use_raw, args.allow_non_integer,
                              args.min_expression, args.chunk_size, args.cell_length, args.model_size, args.examples,
                              pretrain_batches=args.pretrain_batches, temporal_batches=args.temporal_batches,
                              overrides=tuple(args.overrides), validation_fraction=args.validation_fraction,
                              baseline_columns=tuple(args.baseline_columns))
    metrics = run_pipeline(args.data, args.out, options, log=lambda line: print(line, flush=True))
    print()
    print(scores_table(metrics, f"{args.time_column} x {args.time_scale:g}" if args.time_scale != 1 else
                       args.time_column))
    print(f"\nFinished in {metrics['pipeline']['seconds']} s; predictions.csv, metrics.json and predicted_vs_true.png "
          f"in {Path(args.out) / 'predictions'}, the model in {Path(args.out) / 'hf-model'}")


def _run_predict_time(args) -> None:
    from maxtoki.inference.predict_time import predict_time
    from maxtoki.pipeline import scores_table

    metrics = predict_time(args.checkpoint, args.data, args.out, args.train_data, args.batch_size, args.device,
                           args.interval, args.calibration_data, tuple(args.baseline_columns), args.donor_column)
    print(scores_table(metrics))
    print(f"(linear regressor {metrics['baseline_linear_fit']}); predictions.csv, metrics.json and "
          f"predicted_vs_true.png in {args.out}")


def _run_generate(args) -> None:
    from maxtoki.inference.generate import Sampling, generate

    sampling = Sampling(not args.sample, args.temperature, args.top_k, args.top_p, args.max_new_tokens, args.seed)
    result = generate(args.checkpoint, args.data, args.out, sampling, args.batch_size, args.device,
                      evaluate=args.evaluate, cells=args.cells)
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

    out = embed(args.checkpoint, args.data, args.out, medians=args.medians, vocab_path=args.vocab,
                gene_id_column=args.gene_id_column, allow_non_integer=args.allow_non_integer,
                min_expression=args.min_expression, batch_size=args.batch_size, device=args.device)
    print(f"wrote {out} with obsm[{EMBEDDING_KEY!r}]; in scanpy: sc.pp.neighbors(adata, use_rep={EMBEDDING_KEY!r})")


def _analysis_inputs(args, columns: list[str]):
    """The model and the cells of an analysis command, checked against each other."""
    from maxtoki.analysis.cells import load_cells
    from maxtoki.analysis.prompts import ContextOptions
    from maxtoki.inference.export import model_vocabulary
    from maxtoki.inference.predict_time import load_model

    h5ad = str(args.data).endswith(".h5ad")
    vocab = model_vocabulary(args.checkpoint, args.vocab) if h5ad else None
    model = load_model(args.checkpoint, vocab) if vocab else None
    cells = load_cells(args.data, [args.donor_column, *args.match_columns, *columns], time_column=args.time_column,
                       vocab=vocab, medians=args.medians, gene_id_column=args.gene_id_column,
                       allow_non_integer=args.allow_non_integer,
                       model_input_size=args.model_input_size or (
                           model.config.max_position_embeddings // (args.context_cells + 1) if model else 4096))
    model = model or load_model(args.checkpoint, cells.vocab)
    return model, cells, ContextOptions(args.donor_column, tuple(args.match_columns), args.context_cells,
                                        args.time_scale)


def _run_age_acceleration(args) -> None:
    from maxtoki.analysis.age_acceleration import AccelerationOptions, age_acceleration

    from maxtoki.analysis.trained_donors import trained_donors

    model, cells, context = _analysis_inputs(args, [args.condition_column])
    options = AccelerationOptions(args.condition_column, args.case, args.control, args.age_tolerance, args.pairs,
                                  args.bootstrap, args.confidence, args.seed)
    trained = trained_donors(args.train_data, args.donor_column, cells) if args.train_data else None
    summary = age_acceleration(model, cells, args.out, context, options, args.batch_size, args.device, trained)
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
    from maxtoki.data.splits import parse_holdout_values

    query_where, context_where = parse_holdout_values(args.query_where), parse_holdout_values(args.context_where)
    model, cells, context = _analysis_inputs(args, [c for c, _ in [*query_where, *context_where]])
    options = PerturbOptions(tuple(args.genes), args.top_genes, tuple(args.modes), args.query_cells,
                             tuple(query_where), tuple(context_where), args.next_cell, args.seed,
                             contexts_per_cell=args.contexts_per_cell)
    effects = perturb(model, cells, args.out, context, options, args.batch_size, args.device)
    top = effects.iloc[0]
    print(f"{effects['gene'].nunique()} genes x {len(options.modes)} perturbations; strongest: {top['mode']} "
          f"{top['gene']} shifts the predicted time by {top['mean_shift']:+.2f} over {top['cells']} cells; "
          f"effects.csv, shifts.csv and perturb.png in {args.out}")


def _run_export(args) -> None:
    from maxtoki.inference.export import export_hf

    out = export_hf(args.checkpoint, args.out, args.vocab, args.time_unit)
    print(f"exported {args.checkpoint} -> {out} (LlamaForCausalLM.from_pretrained loads it; vocab.json and "
          "maxtoki.json beside it)")


def _run_plot_run(args) -> None:
    from maxtoki.run_curves import plot_run

    out = plot_run(args.run, args.out)
    print(f"curves -> {out} (numbers in {out.with_suffix('.csv')})")


def _run_import(args) -> None:
    from maxtoki.inference.import_hf import import_hf

    out = import_hf(args.source, args.out, args.vocab, args.time_unit, args.label_scalar, args.additive_penalty,
                    args.timelapse_loss)
    print(f"imported {args.source} -> {out}; give it to predict time, generate and embed as --checkpoint {out}, "
          f"and to stage-2 training as model.pretrained={out} load_path=null")


def _run_inspect(args) -> None:
    from maxtoki.data.inspect import describe_shards

    print(describe_shards(args.path, vocab_path=args.vocab, n_examples=args.cells))


def main(argv: list[str] | None = None) -> int:
    from maxtoki.runtime import keep_freed_memory
    from maxtoki.storage import drop_empty_endpoints

    drop_empty_endpoints()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _apply_config(parser, argv)
        if args.command in ("predict", "generate", "embed", "export-hf", "import-hf", "analyze", "pipeline"):
            keep_freed_memory()
        args.handler(args)
    except MaxtokiError as exc:
        print(f"maxtoki: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maxtoki: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
