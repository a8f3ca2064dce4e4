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


def embed_tokens(model, cells: list[np.ndarray], vocab: Vocabulary, batch_size: int = 16,
                 device: str = "cpu") -> np.ndarray:
    """Mean-pooled last-layer states of the gene tokens of every cell (cells x hidden size)."""
    import torch

    limit = model.config.max_position_embeddings
    model = model.to(device).eval()
    is_gene = torch.as_tensor(vocab.is_gene, device=device)
    out = []
    with torch.no_grad():
        for start in range(0, len(cells), batch_size):
            batch = [np.asarray(c[:limit], dtype=np.int64) for c in cells[start:start + batch_size]]
            longest = max(len(c) for c in batch)
            ids = torch.full((len(batch), longest), vocab.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, cell in enumerate(batch):
                ids[row, :len(cell)] = torch.from_numpy(cell)
                mask[row, :len(cell)] = 1
            ids, mask = ids.to(device), mask.to(device)
            states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            genes = (mask.bool() & is_gene[ids]).unsqueeze(-1).to(states.dtype)
            pooled = (states * genes).sum(dim=1) / genes.sum(dim=1).clamp(min=1)
            out.append(pooled.float().cpu().numpy())
    return np.concatenate(out)


def embed(checkpoint: str, data: str, out: str | Path, *, medians: str | None = None, vocab_path: str | None = None,
          gene_id_column: str | None = None, allow_non_integer: bool = False, min_expression: float = 0.0,
          batch_size: int = 16, device: str = "cpu") -> Path:
    """Embed the cells of an .h5ad (tokenized here, with ``medians`` and the model's vocabulary) or of cell
    shards; write an .h5ad."""
    import anndata as ad
    import pandas as pd

    from maxtoki.data.cell_store import CellStore
    from maxtoki.data.tokenize import tokenize_anndata
    from maxtoki.inference.export import model_vocabulary
    from maxtoki.inference.predict_time import load_model

    if str(data).endswith(".h5ad"):
        if not medians:
            raise MaxtokiError("embedding an .h5ad tokenizes it first: give --medians (and the options used for "
                               "the training data)")
        vocab = model_vocabulary(checkpoint, vocab_path)
        adata = ad.read_h5ad(data)
        model = load_model(checkpoint, vocab)
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
        model = load_model(checkpoint, vocab)
        samples = list(store)
        meta = pd.DataFrame([{k: v for k, v in s.items() if k not in ("input_ids", "length")} for s in samples])
        adata = ad.AnnData(obs=meta.set_index("cell_id"))
        adata.obsm[EMBEDDING_KEY] = embed_tokens(model, [s["input_ids"] for s in samples], vocab, batch_size, device)
    adata.uns["maxtoki_embedding"] = {"checkpoint": str(checkpoint), "pooling": "mean of gene tokens, last layer"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    return out
