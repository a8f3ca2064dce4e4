"""Small real data sets bundled for the demo, tests and tutorials.

| name | what | cells x genes | values |
|---|---|---|---|
| ``hsmm`` | myoblasts at 0/24/48/72 h of differentiation (GEO GSE52529) | 271 x 47,192 | FPKM |
| ``pbmc3k`` | 10x Genomics PBMC 3k | 2,700 x 32,738 | raw UMI counts |
| ``gencode`` | GENCODE v44 Ensembl gene ID -> symbol, no header | 62,754 rows | |

Both h5ad files hold unversioned Ensembl IDs in ``var["ensembl_id"]``; HSMM's var index holds
versioned IDs, PBMC's holds symbols.
"""

from __future__ import annotations

from pathlib import Path

_FILES = {
    "hsmm": "hsmm_myoblast_timecourse.h5ad",
    "pbmc3k": "pbmc3k_raw.h5ad",
    "gencode": "gencode_v44_gene_id2name.csv",
}


def example_path(name: str) -> Path:
    """Path of a bundled file: ``hsmm``, ``pbmc3k`` or ``gencode``."""
    if name not in _FILES:
        raise KeyError(f"unknown example {name!r}; choose from {', '.join(_FILES)}")
    return Path(__file__).parent / _FILES[name]
