"""The blueprint of a paragraph data set: every example's group, task, cells and times.

Sampling produces a blueprint; writing turns a blueprint into shards. Saved beside the shards
(``blueprint.npz``), it is everything needed to rebuild them byte for byte from the same cells.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NEXT_CELL, TIME_BETWEEN_CELLS = 0, 1
TASK_NAMES = {NEXT_CELL: "NextCell", TIME_BETWEEN_CELLS: "TimeBetweenCells"}


@dataclass
class Blueprint:
    offsets: np.ndarray  # int64 (examples + 1): example i uses entries offsets[i]:offsets[i+1]
    cell_indices: np.ndarray  # int64: stage-1 sample index of each cell, query/response cell last
    times: np.ndarray  # int64: each cell's time in integer units
    tasks: np.ndarray  # int8 per example
    groups: np.ndarray  # int64 per example, index into group_names
    group_names: list[str]

    def __len__(self) -> int:
        return len(self.tasks)

    def cells(self, i: int) -> np.ndarray:
        return self.cell_indices[self.offsets[i]:self.offsets[i + 1]]

    def cell_times(self, i: int) -> np.ndarray:
        return self.times[self.offsets[i]:self.offsets[i + 1]]

    def select(self, start: int, end: int) -> Blueprint:
        lo, hi = self.offsets[start], self.offsets[end]
        return Blueprint(self.offsets[start:end + 1] - lo, self.cell_indices[lo:hi], self.times[lo:hi],
                         self.tasks[start:end], self.groups[start:end], self.group_names)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, offsets=self.offsets, cell_indices=self.cell_indices, times=self.times,
                            tasks=self.tasks, groups=self.groups, group_names=np.array(self.group_names, dtype=str))
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> Blueprint:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["offsets"], data["cell_indices"], data["times"], data["tasks"], data["groups"],
                       [str(g) for g in data["group_names"]])
