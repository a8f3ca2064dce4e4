"""Predicted timelapses for many query cells after one context, computing the context once.

The context (up to ``<boq>``) runs once and its keys and values are cached; the query variants
(``cell <eoq>``) then run in batches over that cache. A perturbation screen asks hundreds of
variants of one query after the same context, so this is what makes it practical.
"""

from __future__ import annotations

import numpy as np

from maxtoki.inference.timelapse_readout import TimelapseReadout
from maxtoki.vocab import Vocabulary


class SharedContextPredictor:
    def __init__(self, model, vocab: Vocabulary, batch_size: int = 64, device: str = "cpu"):
        self.model, self.vocab = model.to(device).eval(), vocab
        self.batch_size, self.device = batch_size, device
        self.readout = TimelapseReadout(vocab, device)

    def __call__(self, context: np.ndarray, queries: list[np.ndarray]) -> np.ndarray:
        """Expected timelapse (time tokens) after ``context`` for each query cell (``<bos> ... <eos>``)."""
        return self.read(self.cache(context), queries)

    def cache(self, context: np.ndarray):
        """The context's keys and values, to read any number of query batches after it."""
        import torch

        with torch.no_grad():
            prefix = torch.as_tensor(np.asarray(context, dtype=np.int64), device=self.device)[None]
            return prefix, self.model(input_ids=prefix, use_cache=True).past_key_values.to_legacy_cache()

    def read(self, cached, queries: list[np.ndarray]) -> np.ndarray:
        """Expected timelapse after a cached context for each query cell."""
        import torch
        from transformers import DynamicCache

        prefix, cached = cached
        with torch.no_grad():
            expected = np.empty(len(queries))  # filled in place (results gathered in small arrays between the
            # batches' large temporary ones held memory that was never given back: benchmarks/calibration_memory.py)
            for start in range(0, len(queries), self.batch_size):
                batch = [np.append(np.asarray(q, dtype=np.int64), self.vocab.eoq_id)
                         for q in queries[start:start + self.batch_size]]
                rows, longest = len(batch), max(len(q) for q in batch)
                ids = torch.full((rows, longest), self.vocab.pad_id, dtype=torch.long)
                mask = torch.zeros((rows, prefix.shape[1] + longest), dtype=torch.long)
                mask[:, :prefix.shape[1]] = 1
                for row, query in enumerate(batch):
                    ids[row, :len(query)] = torch.from_numpy(query)
                    mask[row, prefix.shape[1]:prefix.shape[1] + len(query)] = 1
                cache = DynamicCache.from_legacy_cache(tuple((k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                                             for k, v in cached))
                hidden = self.model.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                          past_key_values=cache).last_hidden_state
                last = torch.as_tensor([len(q) - 1 for q in batch], device=self.device)
                logits = self.model.lm_head(hidden[torch.arange(rows, device=self.device), last])
                expected[start:start + rows] = self.readout(logits)[0]
        return expected
