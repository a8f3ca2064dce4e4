"""Cell and gene embeddings: one vector per cell, for neighbours, clustering and UMAP in scanpy, and one per
gene, in context.

Cells: the mean of one layer's hidden states (by default the last, final-normed) over the cell's gene tokens,
``<bos>``, ``<eos>`` and padding excluded, written to ``obsm["X_maxtoki"]`` so that
``sc.pp.neighbors(adata, use_rep="X_maxtoki")`` works. Genes: each gene's hidden state at the same layer,
averaged over the cells whose rank list holds it (Geneformer's contextual gene embedding), written to
``varm["X_maxtoki"]`` beside ``var["maxtoki_cells"]``, the number of those cells (NaN rows where none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maxtoki.errors import MaxtokiError
from maxtoki.vocab import Vocabulary

EMBEDDING_KEY = "X_maxtoki"


PACKING_CHUNK = 512  # cells packed together: first-fit-decreasing stays cheap, rows stay full


def embed_tokens(model, cells: list[np.ndarray], vocab: Vocabulary, batch_size: int = 16,
                 device: str = "cpu", pack: bool | None = None, layer: int = -1, genes: bool = False):
    """Mean-pooled states at ``layer`` of the gene tokens of every cell (cells x hidden size); with ``genes``
    also ``GeneStates``, every vocabulary gene's state averaged over the cells that hold it.

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
    check_layer(model, layer)
    hidden = model.config.hidden_size
    pooled = torch.zeros(len(cells), hidden, dtype=torch.float64)
    gene_sums = torch.zeros(len(vocab) if genes else 0, hidden, dtype=torch.float64, device=device)
    with torch.no_grad():
        for indices, batch in _batches(cells, batch_size, limit, vocab.pad_id, pack):
            batch = {key: value.to(device) for key, value in batch.items()}
            states = layer_states(model, batch["input_ids"], attention_inputs(model, batch), layer)
            is_gene_token = batch["attention_mask"].bool() & is_gene[batch["input_ids"]]
            owner = batch["owner"][is_gene_token]  # the position in ``indices`` of the cell of each gene token
            sums = torch.zeros(len(indices), hidden, dtype=torch.float64, device=device)
            sums.index_add_(0, owner, states[is_gene_token].double())
            counts = torch.bincount(owner, minlength=len(indices)).clamp(min=1)
            pooled[indices] = (sums / counts[:, None]).cpu()
            if genes:
                gene_sums.index_add_(0, batch["input_ids"][is_gene_token], states[is_gene_token].double())
    if not genes:
        return pooled.float().numpy()
    counts = np.bincount(np.concatenate([c[vocab.is_gene[c]] for c in cells]) if cells else np.zeros(0, int),
                         minlength=len(vocab))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (gene_sums.cpu().numpy() / counts[:, None]).astype(np.float32)
    return pooled.float().numpy(), GeneStates(means, counts)


class GeneStates:
    """Every vocabulary gene's mean state over the cells that hold it (NaN where none) and that number."""

    def __init__(self, means: np.ndarray, cells: np.ndarray):
        self.means, self.cells = means, cells

    def rows_for(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows of given vocabulary tokens (-1: a gene outside the vocabulary: NaN, 0 cells)."""
        means = np.full((len(tokens), self.means.shape[1]), np.nan, dtype=np.float32)
        cells = np.zeros(len(tokens), dtype=np.int64)
        known = tokens >= 0
        means[known], cells[known] = self.means[tokens[known]], self.cells[tokens[known]]
        return means, cells


def check_layer(model, layer: int) -> None:
    """Layers are Hugging Face's hidden states: 0 the token embeddings, 1..L the layers' outputs, -1 the last
    (final-normed)."""
    layers = model.config.num_hidden_layers
    if not -(layers + 1) <= layer <= layers:
        raise MaxtokiError(f"--layer {layer}: the model has layers 0 (token embeddings) to {layers} (or -1 for the "
                           f"last, down to -{layers + 1})")


def layer_states(model, input_ids, attention: dict, layer: int):
    """Hidden states at ``layer``; for the last one without keeping the others."""
    if layer in (-1, model.config.num_hidden_layers):
        return model.model(input_ids=input_ids, **attention).last_hidden_state
    return model(input_ids=input_ids, output_hidden_states=True, **attention).hidden_states[layer]


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
          device: str = "cpu", layer: int = -1) -> Path:
    """Embed the cells of an .h5ad (tokenized here, with ``medians`` and the model's vocabulary: ``vocab``, by
    default a model directory's vocab.json) or of cell shards, and their genes; write an .h5ad (for an .h5ad,
    the input with obsm and varm added; for shards, the cells' columns as obs and the vocabulary's genes that
    any cell holds as var). ``model``: a checkpoint path or a model from ``load_model``."""
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
        embedding[rows], genes = embed_tokens(model, cells.input_ids, vocab, batch_size, device, layer=layer,
                                              genes=True)
        adata.obsm[EMBEDDING_KEY] = embedding
        _add_genes(adata, genes, var_tokens(adata, vocab, gene_id_column))
    else:
        store = CellStore(data)
        if store.manifest.get("kind") != "maxtoki.cells":
            raise MaxtokiError(f"{data}: give cell shards (maxtoki data tokenize) or an .h5ad")
        vocab = store.vocabulary()
        model = model_for(model, vocab)
        samples = list(store)
        meta = pd.DataFrame([{k: v for k, v in s.items() if k not in ("input_ids", "length")} for s in samples])
        cells, genes = embed_tokens(model, [s["input_ids"] for s in samples], vocab, batch_size, device,
                                    layer=layer, genes=True)
        held = vocab.gene_ids[genes.cells[vocab.gene_ids] > 0]
        adata = ad.AnnData(obs=meta.set_index("cell_id"), var=pd.DataFrame(index=[vocab.token(t) for t in held]))
        adata.obsm[EMBEDDING_KEY] = cells
        _add_genes(adata, genes, held)
    adata.uns["maxtoki_embedding"] = {"checkpoint": source, "layer": layer,
                                      "pooling": "cells: mean of their gene tokens; genes: mean over the cells "
                                                 "that hold them"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    return out


def _add_genes(adata, genes: GeneStates, tokens: np.ndarray) -> None:
    """varm[X_maxtoki] and var[maxtoki_cells] for var's genes (``tokens``: their vocabulary ids, -1 none)."""
    adata.varm[EMBEDDING_KEY], adata.var["maxtoki_cells"] = genes.rows_for(np.asarray(tokens, dtype=np.int64))


def var_tokens(adata, vocab: Vocabulary, gene_id_column: str | None) -> np.ndarray:
    """The vocabulary token of each var row of an .h5ad, as tokenizing reads its gene IDs (-1: not in it)."""
    from maxtoki.data.cells.genes import normalize_gene_id

    ids = adata.var[gene_id_column] if gene_id_column else adata.var_names
    known = {gene: int(token) for token, gene in zip(vocab.gene_ids, vocab.genes)}
    return np.array([known.get(normalize_gene_id(str(g)), -1) for g in ids], dtype=np.int64)
