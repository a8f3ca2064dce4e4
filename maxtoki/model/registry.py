"""Registers the models and data loaders with llm-foundry, so recipes name them:

``model: {name: maxtoki_pretrain | maxtoki_temporal, ...}`` and
``train_loader: {name: maxtoki_cells | maxtoki_paragraphs, ...}``, and Composer's uploader of
checkpoints to object storage as a logger, ``loggers: {remote_uploader_downloader: {bucket_uri:
s3://bucket, use_procs: false}}``, to tune how checkpoints reach S3 (threads instead of spawned
processes, concurrency). Importing this module is enough (``scripts/train.py`` does it).
"""

from composer.loggers import RemoteUploaderDownloader
from llmfoundry import registry

from maxtoki.data.loaders import build_cells_loader, build_paragraphs_loader
from maxtoki.model.composer_model import MaxTokiPretrainModel, MaxTokiTemporalModel

for _name, _builder in (("maxtoki_pretrain", MaxTokiPretrainModel), ("maxtoki_temporal", MaxTokiTemporalModel)):
    if _name not in registry.models:
        registry.models.register(_name, func=_builder)
for _name, _builder in (("maxtoki_cells", build_cells_loader), ("maxtoki_paragraphs", build_paragraphs_loader)):
    if _name not in registry.dataloaders:
        registry.dataloaders.register(_name, func=_builder)
if "remote_uploader_downloader" not in registry.loggers:
    registry.loggers.register("remote_uploader_downloader", func=RemoteUploaderDownloader)
