"""Options several command groups share: how inputs are read, and which model runs on which data."""

from __future__ import annotations

import argparse


def add_reading_options(parser: argparse.ArgumentParser) -> None:
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


def add_model_options(parser: argparse.ArgumentParser, data_help: str, out_help: str, batch_size: int) -> None:
    """Options every inference command shares: which model, which data, where to, and how."""
    parser.add_argument("--checkpoint", required=True, help="Composer checkpoint (local or s3://) or HF directory")
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def add_untrained_time_option(parser: argparse.ArgumentParser) -> None:
    """Commands that read the time tokens refuse a model stage 2 has not trained, unless told."""
    parser.add_argument("--allow-untrained-time", action="store_true",
                        help="run on a model whose time tokens were never trained (a stage-1 model, imported "
                             "released weights): its outputs are noise and carry a warning")


def share(text: str) -> float:
    """A share strictly between 0 and 1 (a coverage or confidence)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a share between 0 and 1, such as 0.8")
    return value


def runs_with_config(parser, func, **defaults) -> None:
    """A command's last option, ``--config FILE.yaml`` (its keys are option names), and what runs the command."""
    parser.add_argument("--config", metavar="YAML", help="options from a YAML file")
    parser.set_defaults(func=func, **defaults)
