"""``maxtoki export-hf`` and ``maxtoki import-hf``: MaxToki checkpoints to and from Hugging Face directories.

Two functions add them, because ``maxtoki --help`` lists ``plot-run`` between the two.
"""

from __future__ import annotations


def add_export_command(commands) -> None:
    export = commands.add_parser("export-hf", help="Composer checkpoint -> Hugging Face LlamaForCausalLM directory")
    export.add_argument("--checkpoint", required=True, help="Composer checkpoint (.pt), local or s3://")
    export.add_argument("--vocab", required=True, help="the vocabulary the model was trained with")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument("--time-unit", default="unspecified", help="what one time token means, e.g. months")
    export.set_defaults(func=_run_export, runs_model=True)


def add_import_command(commands) -> None:
    imported = commands.add_parser("import-hf", help="LlamaForCausalLM directory (e.g. released weights) -> MaxToki")
    imported.add_argument("source", metavar="HF_DIR", help="a LlamaForCausalLM directory (save_pretrained)")
    imported.add_argument("--vocab", help="its token dictionary, JSON or pickle (default: one inside HF_DIR, e.g. "
                                          "token_dictionary_v1.json)")
    imported.add_argument("--out", required=True, help="output directory")
    imported.add_argument("--time-unit", default="months", help="what one time token means (released: months)")
    imported.add_argument("--label-scalar", type=float, default=200.0, help="TimeBetweenCells read-out scale")
    imported.add_argument("--additive-penalty", type=float, default=10.0)
    imported.add_argument("--timelapse-loss", choices=("numeric", "cross_entropy"), default="numeric")
    imported.add_argument("--new-token-init", choices=("mean", "random"), default="mean",
                          help="rows of the tokens the source lacks (time tokens, <boq>, <eoq>): mean (drawn like "
                               "the released gene rows; default) or random (N(0, initializer_range))")
    imported.add_argument("--seed", type=int, default=0, help="seed of the new rows")
    imported.set_defaults(func=_run_import, runs_model=True)


def _run_export(args) -> None:
    from maxtoki.inference.export import export_hf

    out = export_hf(args.checkpoint, args.out, args.vocab, args.time_unit)
    print(f"exported {args.checkpoint} -> {out} (LlamaForCausalLM.from_pretrained loads it; vocab.json and "
          "maxtoki.json beside it)")


def _run_import(args) -> None:
    import json

    from maxtoki.inference.import_hf import import_hf

    out = import_hf(args.source, args.out, args.vocab, args.time_unit, args.label_scalar, args.additive_penalty,
                    args.timelapse_loss, args.new_token_init, args.seed)
    metadata = json.loads((out / "maxtoki.json").read_text())
    print(f"imported {args.source} -> {out}; embed and next-gene scoring take it as --checkpoint {out}")
    if metadata["time_tokens_trained"]:
        print("its time tokens are trained: predict time, generate and analyze take it too")
    else:
        rows = metadata.get("new_token_rows")
        new = f" (new rows {rows['ids'][0]}..{rows['ids'][1]}, {rows['init']} init)" if rows else ""
        print(f"a stage-1 model: its time tokens{new} are untrained "
              f"until stage 2 has run on it: maxtoki pipeline DATA.h5ad --time-column COL --pretrained {out} --out DIR, "
              f"or composer scripts/train.py configs/temporal/217m.yaml model.pretrained={out} ...")
