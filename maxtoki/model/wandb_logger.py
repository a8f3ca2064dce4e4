"""Composer's ``WandBLogger`` that autoresume can ask for checkpoints it does not hold.

On a first run, autoresume asks every logger for the latest checkpoint. Composer's ``WandBLogger``
answers with a ``RuntimeError`` when it has no wandb entity (always the case offline), which stops
the run before its first step. Checkpoints are stored as wandb artifacts only with
``log_artifacts: true``; otherwise there is nothing to download, and this logger says so with the
``FileNotFoundError`` that autoresume expects. Registered as ``wandb``, so recipes keep the usual key.
"""

from __future__ import annotations

from composer.loggers import WandBLogger


class ResumableWandBLogger(WandBLogger):
    def download_file(self, remote_file_name: str, destination: str, overwrite: bool = False,
                      progress_bar: bool = True):
        if not self._log_artifacts or not self.entity:
            raise FileNotFoundError(f"{remote_file_name}: wandb holds no checkpoints of this run")
        return super().download_file(remote_file_name, destination, overwrite, progress_bar)
