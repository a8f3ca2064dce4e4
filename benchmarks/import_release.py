"""Importing a 217M-shaped release: wall time and peak memory of `maxtoki import-hf`, fp32 and bf16 sources.

The source is a directory laid out as MaxToki-217M is released (the published config: 11 layers,
hidden 1,232, 8 heads of 154, 20,275 rows, untied; random weights; safetensors) with the released
token_dictionary_v1.json. Each import runs in a fresh process (the command as a user runs it, torch
import included); its peak resident memory is that process's. Median of `--repeats` runs.

    .venv/bin/python benchmarks/import_release.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def measure_one(source: str, out: str) -> None:
    """In the child: the import as the command line runs it, then its wall time and peak memory."""
    start = time.monotonic()
    from maxtoki.cli import main

    assert main(["--quiet", "import-hf", source, "--out", out]) == 0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": time.monotonic() - start, "peak_gib": peak_kib / 2 ** 20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure-one", nargs=2, metavar=("SOURCE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_one:
        measure_one(*args.measure_one)
        return
    import torch
    from helpers.released import released_config, write_release

    results = {}
    with tempfile.TemporaryDirectory(prefix="import-release-") as tmp:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            source = write_release(Path(tmp) / f"MaxToki-217M-{name}",
                                   released_config(hidden=1232, layers=11, heads=8, intermediate=2464), dtype=dtype)
            size = (source / "model.safetensors").stat().st_size
            runs = []
            for repeat in range(args.repeats):
                child = subprocess.run([sys.executable, __file__, "--measure-one", str(source),
                                        str(Path(tmp) / f"imported-{name}")], capture_output=True, text=True,
                                       check=True)
                runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
            results[name] = {"source_gb": round(size / 1e9, 3),
                             "seconds_median": round(statistics.median(r["seconds"] for r in runs), 2),
                             "peak_gib_median": round(statistics.median(r["peak_gib"] for r in runs), 2),
                             "runs": runs}
            print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
