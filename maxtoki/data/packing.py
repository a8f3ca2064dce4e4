"""Sequence packing: several cells per row, so that a batch is real tokens rather than padding.

Stage-1 cells vary in length (on PBMC 3k they average 849 tokens in a 4,096 context): padded to the
longest of a batch, half of the compute goes to padding. Packed rows hold whole cells one after the
other; ``sequence_id`` (the cell's index in its row, -1 on padding) and ``position_ids`` (restarting
at 0 with every cell) keep each cell's attention and positions exactly what they are unpacked.

``PackingCollator`` follows llm-foundry's ``BinPackCollator``: the loader reads ``packing_ratio``
times as many cells as the batch has rows, first-fit-decreasing packs them with the rows left over
from the previous batch, sends the fullest rows and keeps the others for the next batch.
"""

from __future__ import annotations

import numpy as np
import torch

from maxtoki.errors import MaxtokiError

MAX_LEFTOVER_ROWS_PER_ROW = 4  # rows kept for the next batch, per row of a batch: beyond, cells are dropped


def first_fit_decreasing(lengths: list[int], indices, row_length: int, rows: list[list[int]] | None = None,
                         ) -> list[list[int]]:
    """``indices`` (into ``lengths``) added to ``rows`` of at most ``row_length`` tokens, longest first,
    each into the first row with room (a new row when none has)."""
    rows = [list(row) for row in rows or []]
    used = [sum(lengths[i] for i in row) for row in rows]
    for index in sorted(indices, key=lambda i: -lengths[i]):
        if lengths[index] > row_length:
            raise MaxtokiError(f"a cell of {lengths[index]} tokens does not fit a packed row of {row_length}; "
                               "raise max_seq_len or tokenize with a smaller --model-input-size")
        row = next((r for r, filled in enumerate(used) if filled + lengths[index] <= row_length), len(rows))
        if row == len(rows):
            rows.append([])
            used.append(0)
        rows[row].append(index)
        used[row] += lengths[index]
    return rows


def packed_batch(cells: list[np.ndarray], rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` (1 on real tokens), ``position_ids`` and ``sequence_id`` of rows
    holding ``cells`` in the given order, padded to the longest row."""
    longest = max(sum(len(cells[i]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), longest), dtype=torch.long)
    sequence_id = torch.full((len(rows), longest), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for number, index in enumerate(row):
            cell = torch.from_numpy(np.asarray(cells[index], dtype=np.int64))
            end = start + len(cell)
            input_ids[r, start:end] = cell
            position_ids[r, start:end] = torch.arange(len(cell))
            sequence_id[r, start:end] = number
            start = end
        position_ids[r, start:] = torch.arange(longest - start)  # padding: a run of its own, never scored
    return {"input_ids": input_ids, "attention_mask": (sequence_id >= 0).long(), "position_ids": position_ids,
            "sequence_id": sequence_id}


class PackingCollator:
    """Packs the cells of each loader batch, with the rows left over from earlier batches, into ``rows`` rows
    of at most ``row_length`` tokens."""

    def __init__(self, rows: int, row_length: int, pad_id: int):
        self.rows, self.row_length, self.pad_id = rows, row_length, pad_id
        self._leftover: list[list[np.ndarray]] = []
        self.cells_in, self.cells_dropped = 0, 0

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        cells = [cell for row in self._leftover for cell in row] + [np.asarray(s["input_ids"]) for s in samples]
        rows, start = [], 0
        for row in self._leftover:
            rows.append(list(range(start, start + len(row))))
            start += len(row)
        lengths = [len(cell) for cell in cells]
        rows = first_fit_decreasing(lengths, range(start, len(cells)), self.row_length, rows)
        rows.sort(key=lambda row: -sum(lengths[i] for i in row))  # the fullest rows go now
        kept = rows[self.rows:]
        limit = MAX_LEFTOVER_ROWS_PER_ROW * self.rows
        self.cells_in += len(samples)
        self.cells_dropped += sum(len(row) for row in kept[limit:])
        self._leftover = [[cells[i] for i in row] for row in kept[:limit]]
        return packed_batch(cells, rows[:self.rows], self.pad_id)


def real_token_share(batches) -> tuple[float, int]:
    """Share of the tokens of ``batches`` that are not padding, and how many cells they hold: what packing
    is for, measured on a loader."""
    real = total = cells = 0
    for batch in batches:
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
        cells += int((batch["sequence_id"].max(dim=1).values + 1).sum()) if "sequence_id" in batch \
            else len(batch["input_ids"])
    return real / total, cells
