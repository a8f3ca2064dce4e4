"""Stage 2 from released-layout weights, on CPU: does import keep what stage 1 learnt, and which
initialisation of the new rows (time tokens, <boq>, <eoq>) lets stage 2 learn faster?

1. Stage 1 in the released layout: a tiny model trained by configs/pretrain/tiny-cpu.yaml on PBMC 3k
   and on the HSMM cells that stage 2 trains on, encoded with the released vocabulary and medians
   (`maxtoki data released`); never on the cells stage 2 is evaluated on (validation) or scored on
   (held out), which the run from scratch, made first with the same seed, names.
2. It is written as a release is (20,275 rows, no time tokens, no MaxToki settings) and imported with
   `maxtoki import-hf --new-token-init mean` and `random`; a release of the same shape with random
   weights, imported, is stage 2 from scratch.
3. `maxtoki pipeline` on the bundled HSMM time course with `--pretrained` each, the same batches and seed
   (so the same cells held out).

Reported per run: NextCell cross-entropy on the validation cells (stage 2's evaluation; the cells are
not trained on), TimeBetweenCells MAE and Pearson r on the held-out cells with the training-mean and
naive baselines, wall seconds.

    .venv/bin/python benchmarks/released_stage2.py --seeds 0 1 2 --out released_stage2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.released import as_release, released_config, write_release  # noqa: E402

from maxtoki.cli import main as cli  # noqa: E402
from maxtoki.datasets import example_path  # noqa: E402


def stage1_release(work: Path, training_cells: list[str], cell_length: int, batches: int, seed: int) -> Path:
    """A stage-1 model trained on PBMC 3k and the given HSMM cells in the released layout, written as a release
    is."""
    import anndata as ad

    from maxtoki.inference.loading import load_composer_checkpoint
    from maxtoki.training import train_from_recipe

    hsmm = ad.read_h5ad(example_path("hsmm"))
    hsmm[hsmm.obs_names.isin(training_cells)].copy().write_h5ad(work / "hsmm-train.h5ad")
    assert cli(["data", "released", "--out", str(work / "released")]) == 0
    vocab, medians = str(work / "released/vocab.json"), str(work / "released/medians.json")
    assert cli(["data", "tokenize", str(example_path("pbmc3k")), str(work / "hsmm-train.h5ad"), "--vocab", vocab,
                "--medians", medians, "--gene-id-column", "ensembl_id", "--allow-non-integer", "--min-expression",
                "0.1", "--out", str(work / "stage1-cells"), "--model-input-size", str(cell_length)]) == 0
    train_from_recipe(str(ROOT / "configs/pretrain/tiny-cpu.yaml"), [
        f"variables.data={work / 'stage1-cells'}", f"variables.vocab={vocab}",
        f"save_folder={work / 'stage1'}", f"max_seq_len={cell_length}", f"max_duration={batches}ba",
        f"eval_interval={batches}ba", f"save_interval={batches}ba", f"seed={seed}", "autoresume=false",
        "save_overwrite=true"])
    return write_release(work / "release-trained", model=as_release(
        load_composer_checkpoint(str(work / "stage1" / "latest-rank0.pt"))))


def cells_stage2_trains_on(pipeline: Path) -> list[str]:
    """The ids of the cells in a pipeline run's training paragraphs."""
    from maxtoki.data.paragraphs.cell_store import CellStore

    cells = CellStore(str(pipeline / "cells"))
    used = {int(i) for example in CellStore(str(pipeline / "paragraphs" / "train"))
            for i in example["cell_indices"]}
    return [str(cells[i]["cell_id"]) for i in sorted(used)]


def run(work: Path, start: str, release: Path, init: str, args, seed: int) -> dict:
    from maxtoki.pipeline import PipelineOptions, run_pipeline

    model = work / f"imported-{start.split()[0]}-{init}"
    assert cli(["--quiet", "import-hf", str(release), "--out", str(model), "--new-token-init", init,
                "--seed", str(seed)]) == 0
    begin = time.monotonic()
    metrics = run_pipeline(example_path("hsmm"), work / f"pipeline-{start.split()[0]}-{init}", PipelineOptions(
        time_column="hours", allow_non_integer=True, min_expression=0.1, cell_length=args.cell_length,
        temporal_batches=args.temporal_batches, seed=seed, pretrained=str(model)), log=lambda line: None)
    evaluation = metrics["stage2_evaluation"]
    return {"start": start, "new_token_init": init, "seed": seed, "seconds": round(time.monotonic() - begin),
            "next_cell_cross_entropy": evaluation["NextGeneCrossEntropy"],
            "mae": metrics["model"]["mae"], "pearson_r": metrics["model"]["pearson_r"],
            "training_mean_mae": metrics["baseline_training_mean"]["mae"],
            "naive_mae": metrics["baseline_most_common_time"]["mae"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--cell-length", type=int, default=64)
    parser.add_argument("--stage1-batches", type=int, default=300)
    parser.add_argument("--temporal-batches", type=int, default=300)
    parser.add_argument("--out", default="released_stage2.json")
    args = parser.parse_args()

    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="released-stage2-") as tmp:
            work = Path(tmp)
            config = released_config(hidden=64, layers=2, heads=4, intermediate=128, context=args.cell_length)
            scratch = write_release(work / "release-random", config=config, seed=seed)
            rows.append(run(work, "scratch", scratch, "mean", args, seed))
            print(json.dumps(rows[-1]), flush=True)
            training_cells = cells_stage2_trains_on(work / "pipeline-scratch-mean")
            trained = stage1_release(work, training_cells, args.cell_length, args.stage1_batches, seed)
            for init in ("mean", "random"):
                rows.append(run(work, "stage-1 weights", trained, init, args, seed))
                print(json.dumps(rows[-1]), flush=True)
                Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")

if __name__ == "__main__":
    main()
