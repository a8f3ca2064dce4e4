"""Models: named LLaMA sizes, the Composer wrappers of both training stages, losses and metrics.

Recipes name the Composer models and callbacks through llm-foundry's registry (``maxtoki.model.registry``); from
Python they are the classes below, imported on first use, so that ``import maxtoki.model`` loads neither torch
nor Composer.
"""

from importlib import import_module

from maxtoki.model.builders import build_backbone
from maxtoki.model.sizes import SIZES, count_parameters, llama_config

# Imported on first use: these modules import Composer.
_LAZY = {"MaxTokiModel": "maxtoki.model.composer_model", "MaxTokiPretrainModel": "maxtoki.model.composer_model",
         "MaxTokiTemporalModel": "maxtoki.model.composer_model", "TrainingProgress": "maxtoki.model.progress",
         "ResumableWandBLogger": "maxtoki.model.wandb_logger"}

__all__ = [
    "SIZES", "MaxTokiModel", "MaxTokiPretrainModel", "MaxTokiTemporalModel", "ResumableWandBLogger",
    "TrainingProgress", "build_backbone", "count_parameters", "llama_config",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)
