"""``maxtoki plot-run``: the loss and evaluation curves of a training run."""

from __future__ import annotations


def add_commands(commands) -> None:
    curves = commands.add_parser("plot-run", help="loss and evaluation curves of a training run (wandb directory)")
    curves.add_argument("run", metavar="RUN", help="wandb/offline-run-* directory, or the wandb/ folder (latest run)")
    curves.add_argument("--out", required=True, help="PNG file; the numbers go beside it as CSV")
    curves.set_defaults(func=_run_plot_run)


def _run_plot_run(args) -> None:
    from maxtoki.run_curves import plot_run

    out = plot_run(args.run, args.out)
    print(f"curves -> {out} (numbers in {out.with_suffix('.csv')})")
