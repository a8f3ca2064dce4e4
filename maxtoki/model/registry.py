"""Registers the models and data loaders with llm-foundry, so recipes name them:

``model: {name: maxtoki_pretrain | maxtoki_temporal, ...}`` and
``train_loader: {name: maxtoki_cells | maxtoki_paragraphs, ...}``.
Importing this module is enough (``scripts/train.py`` does it).
"""

from llmfoundry import registry

from maxtoki.data.loaders import build_cells_loader, build_paragraphs_loader
from maxtoki.model.composer_model import MaxTokiPretrainModel, MaxTokiTemporalModel

for _name, _builder in (("maxtoki_pretrain", MaxTokiPretrainModel), ("maxtoki_temporal", MaxTokiTemporalModel)):
    if _name not in registry.models:
        registry.models.register(_name, func=_builder)
for _name, _builder in (("maxtoki_cells", build_cells_loader), ("maxtoki_paragraphs", build_paragraphs_loader)):
    if _name not in registry.dataloaders:
        registry.dataloaders.register(_name, func=_builder)
