"""Cell embeddings: one vector per cell, for neighbours, clustering and UMAP in scanpy.

Pooling: the mean of the last layer's (final-normed) hidden states over the cell's gene tokens,
``<bos>``, ``<eos>`` and padding excluded. Written to ``obsm["X_maxtoki"]`` so that
``sc.pp.neighbors(adata, use_rep="X_maxtoki")`` works.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maxtoki.errors import MaxtokiError
from maxtoki.vocab import Vocabulary

EMBEDDING_KEY = "X_maxtoki"


PACKING_CHUNK = 512  # cells packed together: first-fit-decreasing stays cheap, rows stay full


def embed_tokens(model, cells: list[np.ndarray], vocab: Vocabulary, batch_size: int = 16,
                 device: str = "cpu", pack: bool | None = None) -> np.ndarray:
    """Mean-pooled last-layer states of the gene tokens of every cell (cells x hidden size).

    ``pack`` (default: where attention is flash-attention 2, whose variable-length kernels skip the
    pairs of tokens of different cells) runs rows of ``batch_size`` rows holding several cells each;
    otherwise batches of ``batch_size`` cells of similar length, so that little is padding.
    """
    import torch

    from maxtoki.model.packed_attention import attention_inputs

    limit = model.config.max_position_embeddings
    model = model.to(device).eval()
    cells = [np.asarray(c[:limit], dtype=np.int64) for c in cells]
    if pack is None:
        pack = model.config._attn_implementation == "flash_attention_2"
    is_gene = torch.as_tensor(vocab.is_gene, device=device)
    pooled = torch.zeros(len(cells), model.config.hidden_size, dtype=torch.float64)
    with torch.no_grad():
        for indices, batch in _batches(cells, batch_size, limit, vocab.pad_id, pack):
            batch = {key: value.to(device) for key, value in batch.items()}
            states = model(input_ids=batch["input_ids"], output_hidden_states=True,
                           **attention_inputs(model, batch)).hidden_states[-1]
            genes = batch["attention_mask"].bool() & is_gene[batch["input_ids"]]
            owner = batch["owner"][genes]  # the position in ``indices`` of the cell of each gene token
            sums = torch.zeros(len(indices), states.shape[-1], dtype=torch.float64, device=device)
            sums.index_add_(0, owner, states[genes].double())
            counts = torch.bincount(owner, minlength=len(indices)).clamp(min=1)
            pooled[indices] = (sums / counts[:, None]).cpu()
    return pooled.float().numpy()


def _batches(cells: list[np.ndarray], batch_size: int, limit: int, pad_id: int, pack: bool):
    """(cell index of each row or of each packed cell, tensors) for every batch."""
    import torch

    from maxtoki.data.loaders import PadCollator
    from maxtoki.data.packing import first_fit_decreasing, packed_batch

    lengths = [len(cell) for cell in cells]
    if not pack:
        order = sorted(range(len(cells)), key=lambda i: lengths[i])
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            batch = PadCollator(pad_id)([{"input_ids": cells[i]} for i in chosen])
            batch["owner"] = torch.arange(len(chosen))[:, None].expand_as(batch["input_ids"])
            yield torch.as_tensor(chosen), batch
        return
    for chunk in range(0, len(cells), PACKING_CHUNK):
        rows = first_fit_decreasing(lengths, range(chunk, min(chunk + PACKING_CHUNK, len(cells))), limit)
        for start in range(0, len(rows), batch_size):
            chosen = rows[start:start + batch_size]
            batch = packed_batch(cells, chosen, pad_id)
            # sequence_id numbers the cells of a row; "owner" numbers them across the batch
            offsets = torch.as_tensor(np.cumsum([0] + [len(row) for row in chosen[:-1]]))[:, None]
            batch["owner"] = torch.where(batch["sequence_id"] >= 0, batch["sequence_id"] + offsets, 0)
            yield torch.as_tensor([i for row in chosen for i in row]), batch


def embed(model, data: str, out: str | Path, *, medians: str | None = None,
          vocab: Vocabulary | str | Path | None = None, gene_id_column: str | None = None,
          allow_non_integer: bool = False, min_expression: float = 0.0, batch_size: int = 16,
          device: str = "cpu") -> Path:
    """Embed the cells of an .h5ad (tokenized here, with ``medians`` and the model's vocabulary: ``vocab``, by
    default a model directory's vocab.json) or of cell shards; write an .h5ad. ``model``: a checkpoint path or a
    model from ``load_model``."""
    import anndata as ad
    import pandas as pd

    from maxtoki.data.cells.tokenize import tokenize_anndata
    from maxtoki.data.paragraphs.cell_store import CellStore
    from maxtoki.inference.loading import model_for, model_name, model_vocabulary

    source = model_name(model)
    if str(data).endswith(".h5ad"):
        if not medians:
            raise MaxtokiError("embedding an .h5ad tokenizes it first: give --medians (and the options used for "
                               "the training data)")
        vocab = model_vocabulary(model, vocab)
        adata = ad.read_h5ad(data)
        model = model_for(model, vocab)
        cells = tokenize_anndata(adata, vocab, medians, gene_id_column=gene_id_column,
                                 allow_non_integer=allow_non_integer, min_expression=min_expression,
                                 model_input_size=model.config.max_position_embeddings)
        embedding = np.full((adata.n_obs, model.config.hidden_size), np.nan, dtype=np.float32)
        rows = adata.obs_names.get_indexer(cells.obs.index)
        embedding[rows] = embed_tokens(model, cells.input_ids, vocab, batch_size, device)
        adata.obsm[EMBEDDING_KEY] = embedding
    else:
        store = CellStore(data)
        if store.manifest.get("kind") != "maxtoki.cells":
            raise MaxtokiError(f"{data}: give cell shards (maxtoki data tokenize) or an .h5ad")
        vocab = store.vocabulary()
        model = model_for(model, vocab)
        samples = list(store)
        meta = pd.DataFrame([{k: v for k, v in s.items() if k not in ("input_ids", "length")} for s in samples])
        adata = ad.AnnData(obs=meta.set_index("cell_id"))
        adata.obsm[EMBEDDING_KEY] = embed_tokens(model, [s["input_ids"] for s in samples], vocab, batch_size, device)
    adata.uns["maxtoki_embedding"] = {"checkpoint": source, "pooling": "mean of gene tokens, last layer"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    return out
