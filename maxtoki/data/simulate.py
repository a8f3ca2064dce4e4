"""Synthetic trajectories with a known truth: donors sampled at several ages, counts that change
smoothly with age, for tests of learning and for scale benchmarks.

Model, per cell of donor d at age t (cell type k, condition c):

    rate_g = exp(base_g + type_kg + donor_dg + sum_p loading_pg * sigmoid((t' - centre_p) / width_p))
    counts_g ~ NegativeBinomial(mean = library_size * rate_g / sum(rate), dispersion theta)

with t' = t + age_acceleration for donors of the "disease" condition, so age acceleration has a
known true value. Ages are integers in ``age_unit`` (months by default, like MaxToki); ``age_group`` names
the thirds of the age range young, middle and old (the states of a goal-state perturbation screen). The
genes with the largest age loadings are marked ``var["age_driver"]``, and ``var["age_direction"]`` says
whether each rises (+1) or falls (-1) from the youngest to the oldest age.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from maxtoki.console import progress_bar
from maxtoki.data.h5ad_writer import BlockH5adWriter
from maxtoki.errors import MaxtokiError


@dataclass(frozen=True)
class SimulationOptions:
    donors: int = 20
    ages_per_donor: int = 4
    cells_per_sample: int = 50
    genes: int = 2000
    programs: int = 8
    cell_types: int = 2
    min_age: int = 240
    max_age: int = 960
    disease_donors: int = 0
    age_acceleration: float = 0.0
    library_size: float = 5000.0
    dispersion: float = 5.0
    donor_effect: float = 0.2
    drivers: int = 20
    seed: int = 0
    age_unit: str = "months"

    def __post_init__(self):
        if min(self.donors, self.ages_per_donor, self.cells_per_sample, self.genes, self.programs,
               self.cell_types) < 1:
            raise MaxtokiError("donors, ages, cells, genes, programs and cell types must be at least 1")
        if not 0 <= self.disease_donors <= self.donors:
            raise MaxtokiError("--disease-donors must lie between 0 and --donors")
        if self.max_age <= self.min_age:
            raise MaxtokiError("--max-age must be larger than --min-age")


@dataclass
class _Truth:
    base: np.ndarray
    type_shift: np.ndarray
    loadings: np.ndarray  # programs x genes
    centres: np.ndarray
    widths: np.ndarray


def _truth(options: SimulationOptions, rng: np.random.Generator) -> _Truth:
    g, p = options.genes, options.programs
    base = rng.normal(0.0, 1.2, g)
    type_shift = rng.normal(0.0, 1.0, (options.cell_types, g)) * (rng.random((options.cell_types, g)) < 0.2)
    loadings = rng.normal(0.0, 1.0, (p, g)) * (rng.random((p, g)) < 0.1)
    span = options.max_age - options.min_age
    centres = options.min_age + span * rng.uniform(0.15, 0.85, p)
    widths = span * rng.uniform(0.08, 0.3, p)
    return _Truth(base, type_shift, loadings, centres, widths)


def age_programs(ages: np.ndarray, truth: _Truth) -> np.ndarray:
    """Activity of every program at each age (cells x programs), smooth and monotone in age."""
    return 1.0 / (1.0 + np.exp(-(ages[:, None] - truth.centres[None, :]) / truth.widths[None, :]))


def simulate(out: str | Path, options: SimulationOptions = SimulationOptions()) -> dict:
    """Write the simulated cells to ``out`` (.h5ad) sample by sample; returns a summary."""
    rng = np.random.default_rng(options.seed)
    truth = _truth(options, rng)
    donor_shift = rng.normal(0.0, options.donor_effect, (options.donors, options.genes))
    disease = np.zeros(options.donors, dtype=bool)
    disease[rng.choice(options.donors, options.disease_donors, replace=False)] = True
    writer = BlockH5adWriter(out, options.genes)
    obs_parts = []
    total = options.donors * options.ages_per_donor * options.cells_per_sample
    with progress_bar(total, "simulate") as bar:
        for donor in range(options.donors):
            ages = np.sort(rng.choice(np.arange(options.min_age, options.max_age + 1), options.ages_per_donor,
                                      replace=False))
            for age in ages:
                n = options.cells_per_sample
                types = rng.integers(options.cell_types, size=n)
                effective = np.full(n, age + (options.age_acceleration if disease[donor] else 0.0))
                log_rate = (truth.base + donor_shift[donor])[None, :] + truth.type_shift[types] \
                    + age_programs(effective, truth) @ truth.loadings
                rate = np.exp(log_rate - log_rate.max(axis=1, keepdims=True))
                library = options.library_size * rng.lognormal(0.0, 0.3, n)
                mean = rate / rate.sum(axis=1, keepdims=True) * library[:, None]
                counts = rng.poisson(rng.gamma(options.dispersion, mean / options.dispersion))
                writer.append(sp.csr_matrix(counts.astype(np.float32)))
                obs_parts.append(pd.DataFrame({
                    "donor": f"donor{donor:03d}", "age": float(age), "cell_type": [f"type{t}" for t in types],
                    "condition": "disease" if disease[donor] else "control", "sample": f"donor{donor:03d}_{age}"}))
                bar.update(n)
    obs = pd.concat(obs_parts, ignore_index=True)
    obs.index = [f"cell{i:08d}" for i in range(len(obs))]
    third = (options.max_age - options.min_age) / 3
    obs["age_group"] = np.select([obs["age"] < options.min_age + third, obs["age"] > options.max_age - third],
                                 ["young", "old"], "middle")
    for column in ("donor", "cell_type", "condition", "sample", "age_group"):
        obs[column] = obs[column].astype("category")
    strength = np.abs(truth.loadings).sum(axis=0)
    drivers = np.zeros(options.genes, dtype=bool)
    drivers[np.argsort(-strength)[:options.drivers]] = True
    change = (age_programs(np.array([float(options.max_age)]), truth)
              - age_programs(np.array([float(options.min_age)]), truth)) @ truth.loadings
    var = pd.DataFrame({"gene_symbol": [f"SIM{g:05d}" for g in range(options.genes)],
                        "age_effect": strength, "age_driver": drivers, "age_direction": np.sign(change[0]).astype(int)},
                       index=[f"ENSSIMG{g:011d}" for g in range(options.genes)])
    uns = {"simulation": {k: v for k, v in asdict(options).items()}}
    writer.close(obs, var, uns)
    return {"cells": len(obs), "donors": options.donors, "disease_donors": int(disease.sum()),
            "genes": options.genes, "path": str(out)}
