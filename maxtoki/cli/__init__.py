"""The ``maxtoki`` command. Thin: parses arguments and calls library functions.

Each command group has its module (``data``, ``pipeline``, ``predict``, ``analyze``, ``hf``, ``train``) that adds
its commands and sets ``func``, the function that runs one. Imports are lazy so that data commands start fast
and never load torch or Composer. Every data command also takes ``--config FILE.yaml`` whose keys are option
names; options given on the command line win over the file. ``--quiet`` (before or after the command) prints
nothing but errors.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from maxtoki.cli import analyze, data, hf, pipeline, predict, train
from maxtoki.errors import MaxtokiError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maxtoki", description="Temporal single-cell foundation model toolkit.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict.add_commands(commands)
    hf.add_export_command(commands)
    train.add_commands(commands)
    hf.add_import_command(commands)
    analyze.add_commands(commands)
    pipeline.add_commands(commands)
    data.add_commands(commands)
    _add_quiet_to_commands(parser)
    return parser


QUIET_HELP = "print nothing but errors: no progress bars, notices or results (the outputs are still written)"


def _add_quiet_to_commands(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` after the command too; SUPPRESS keeps a command's default from undoing ``maxtoki --quiet``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                if any(isinstance(a, argparse._SubParsersAction) for a in command._actions):
                    _add_quiet_to_commands(command)
                else:
                    command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                         help=QUIET_HELP)


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
    """The (sub)parser that the leading command words of ``argv`` select (flags before them, such as
    ``--quiet``, are passed over)."""
    current = parser
    for token in argv:
        if token.startswith("-"):
            continue
        subparsers = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or token not in subparsers[0].choices:
            break
        current = subparsers[0].choices[token]
    return current


def main(argv: list[str] | None = None) -> int:
    from maxtoki.console import show_notices, silenced
    from maxtoki.runtime import keep_freed_memory
    from maxtoki.storage import drop_empty_endpoints

    drop_empty_endpoints()
    show_notices()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _apply_config(parser, argv)
        if getattr(args, "runs_model", False):
            keep_freed_memory()
        with silenced() if args.quiet else contextlib.nullcontext():
            args.func(args)
    except MaxtokiError as exc:
        print(f"maxtoki: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maxtoki: interrupted", file=sys.stderr)
        return 130
    return 0
