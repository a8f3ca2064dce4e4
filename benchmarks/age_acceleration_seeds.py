"""The age-acceleration check of the default test run (tests/helpers/planted_shift.py) over several seeds:
the calibrated estimate and its 95% interval for a planted shift of 60 months and for no shift, the
interval a bootstrap over case donors only would give on the same pairs, and the seconds that training
and the two analyses took (what benchmarks/README.md records).

    ../.venv/bin/python age_acceleration_seeds.py [SEEDS...]      # default 0 1 2 3 4 5; about 30 s a seed on 2 cores

A seed changes the simulated donors, which control donors are held out, and the training order.
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.planted_shift import SHIFT, age_acceleration, train_on_simulated_donors  # noqa: E402

from maxtoki.analysis.age_acceleration import AccelerationOptions, PairArrays, bootstrap  # noqa: E402


def main(seeds: list[int]) -> None:
    import maxtoki.training  # noqa: F401  (Composer's import, once, outside the timings)

    rows = []
    for seed in seeds:
        root = Path(tempfile.mkdtemp(prefix=f"age-acceleration-seed{seed}-"))
        start = time.perf_counter()
        train_on_simulated_donors(root, seed)
        trained = time.perf_counter()
        results = {cells: age_acceleration(root, cells, "--train-data", root / "p/train")
                   for cells in ("shifted", "null")}
        analysed = time.perf_counter()
        case_only = {cells: _case_only_interval(root / f"acceleration-{cells}/pairs.csv") for cells in results}
        rows.append((seed, results, case_only, trained - start, analysed - trained))
    print(f"\ncalibrated age acceleration (months) and 95% interval; planted {SHIFT} and 0; (case donors only)")
    for seed, results, case_only, train_seconds, analysis_seconds in rows:
        shifted, null = results["shifted"], results["null"]
        print(f"  seed {seed}: shifted {_interval(shifted)} ({_bounds(case_only['shifted'])}), null "
              f"{_interval(null)} ({_bounds(case_only['null'])}); slope {shifted['slope']:.2f}, {shifted['pairs']} "
              f"pairs, {shifted['case_donors']} case and {shifted['control_donors']} untrained control donors; "
              f"{train_seconds:.0f} s data + training, {analysis_seconds:.0f} s both analyses")


def _case_only_interval(pairs_csv: Path) -> list[float]:
    """The interval of a bootstrap that resamples case donors only: every pair given the same control donor."""
    arrays = PairArrays.from_table(pd.read_csv(pairs_csv))
    arrays.control_donor = np.zeros(len(arrays.control_donor), dtype=int)
    draws = bootstrap(arrays, AccelerationOptions("condition", "disease", "control"))["calibrated"]
    return list(np.nanpercentile(draws, [2.5, 97.5]))


def _interval(summary: dict) -> str:
    return f"{summary['calibrated']:+.1f} [{_bounds(summary['calibrated_interval'])}]"


def _bounds(interval) -> str:
    return f"{interval[0]:+.1f}, {interval[1]:+.1f}"


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0, 1, 2, 3, 4, 5])
