"""Registers the models, data loaders and logger with llm-foundry, so recipes name them:

``model: {name: maxtoki_pretrain | maxtoki_temporal, ...}``,
``train_loader: {name: maxtoki_cells | maxtoki_paragraphs, ...}``, ``loggers: {wandb: ...}``, a
WandBLogger that autoresume can run beside (see ``wandb_logger``), and
``callbacks: {prune_remote_checkpoints: {keep: 3}}`` (see ``remote_checkpoints``) and
``callbacks: {training_progress: {label: stage 1}}`` (a progress bar and evaluation summaries, see ``progress``);
``link_checkpoints_promptly``, which ``train_from_recipe`` adds to runs that save to an object store.
Importing this module is enough (``scripts/train.py`` does it).
"""

from llmfoundry import registry

from maxtoki.data.loaders import build_cells_loader, build_paragraphs_loader
from maxtoki.model.composer_model import MaxTokiPretrainModel, MaxTokiTemporalModel
from maxtoki.model.progress import TrainingProgress
from maxtoki.model.wandb_logger import ResumableWandBLogger
from maxtoki.remote_checkpoints import LinkCheckpointsPromptly, PruneRemoteCheckpoints

for _name, _builder in (("maxtoki_pretrain", MaxTokiPretrainModel), ("maxtoki_temporal", MaxTokiTemporalModel)):
    if _name not in registry.models:
        registry.models.register(_name, func=_builder)
for _name, _builder in (("maxtoki_cells", build_cells_loader), ("maxtoki_paragraphs", build_paragraphs_loader)):
    if _name not in registry.dataloaders:
        registry.dataloaders.register(_name, func=_builder)
registry.loggers.register("wandb", func=ResumableWandBLogger)
if "prune_remote_checkpoints" not in registry.callbacks:
    registry.callbacks.register("prune_remote_checkpoints", func=PruneRemoteCheckpoints)
if "link_checkpoints_promptly" not in registry.callbacks:
    registry.callbacks.register("link_checkpoints_promptly", func=LinkCheckpointsPromptly)
if "training_progress" not in registry.callbacks:
    registry.callbacks.register("training_progress", func=TrainingProgress)
