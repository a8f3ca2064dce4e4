"""Analyses with a trained temporal model: age acceleration of a condition and in-silico perturbation.

Load the cells (``load_cells``) and a model (``maxtoki.inference.load_model``), then run ``age_acceleration``
or ``perturb`` with contexts drawn as ``ContextOptions`` say. None of these modules imports torch or
transformers, so ``import maxtoki.analysis`` stays cheap; the functions are bound here, not looked up on first
use, because most share their module's name.
"""

from maxtoki.analysis.age_acceleration import AccelerationOptions, age_acceleration
from maxtoki.analysis.cells import AnalysisCells, load_cells
from maxtoki.analysis.perturb import PerturbOptions, perturb
from maxtoki.analysis.prompts import ContextOptions
from maxtoki.analysis.trained_donors import trained_donors

__all__ = [
    "AccelerationOptions", "AnalysisCells", "ContextOptions", "PerturbOptions", "age_acceleration", "load_cells",
    "perturb", "trained_donors",
]
