"""Real-token share of stage-1 batches on PBMC 3k, padded and packed.

Usage: .venv/bin/python benchmarks/packing_share.py
Tokenizes the bundled PBMC 3k cells with a 4,096-token context, then reads one epoch of the stage-1
loader at two batch sizes: padded (every row one cell, padded to the longest of its batch) and with
``packing_ratio`` auto and fixed ratios. Deterministic (shuffle seed 1): one run is the result.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from maxtoki.cli import main as cli
from maxtoki.data.loaders import build_cells_loader
from maxtoki.data.packing import real_token_share
from maxtoki.datasets import example_path


def main() -> None:
    root = Path(tempfile.mkdtemp())
    pbmc = example_path("pbmc3k")
    for argv in (["data", "medians", pbmc, "--out", root / "medians.json", "--gene-id-column", "ensembl_id"],
                 ["data", "vocab", "--medians", root / "medians.json", "--out", root / "vocab.json"],
                 ["data", "tokenize", pbmc, "--vocab", root / "vocab.json", "--medians", root / "medians.json",
                  "--gene-id-column", "ensembl_id", "--out", root / "cells", "--model-input-size", 4096]):
        assert cli([str(a) for a in argv]) == 0
    dataset = {"remote": str(root / "cells"), "vocab": str(root / "vocab.json"), "max_seq_len": 4096,
               "shuffle": True, "shuffle_seed": 1}
    print("rows per batch | packing_ratio | real tokens | cells sent | cells dropped")
    for rows in (8, 32):
        padded, cells = real_token_share(build_cells_loader(dataset=dataset, device_batch_size=rows).dataloader)
        print(f"{rows:>14} | {'none':>13} | {padded:>10.1%} | {cells:>10} | {0:>13}")
        for ratio in ("auto", 3, 4, 5):
            spec = build_cells_loader(dataset={**dataset, "packing_ratio": ratio}, device_batch_size=rows)
            packed, cells = real_token_share(spec.dataloader)
            print(f"{rows:>14} | {ratio!s:>13} | {packed:>10.1%} | {cells:>10} | "
                  f"{spec.dataloader.collate_fn.cells_dropped:>13}")


if __name__ == "__main__":
    main()
