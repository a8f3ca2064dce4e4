"""Gene embeddings that start from the cells: each gene's input embedding is its loading on the principal axes
of the cells' rank-value encodings (a gene at rank r of n scores 1 - r/n).

Why: a model trained from random embeddings on a small time course (hundreds of cells) learns to recognise
its training cells one by one rather than the gene programs they share: on the bundled HSMM course it fit
its training pairs exactly and missed held-out ones by 22 h, a per-cell linear read-out of the same cells
by 11 h. Genes that vary together across cells then start with similar embeddings, so the mean over a
cell's genes, which attention computes first, starts as the cell's position along its main axes of
variation, and training refines a read-out that generalises (14.5 h on the same cells;
benchmarks/README.md). Only expression is used, no times: the same information stage 1 trains on.
"""

from __future__ import annotations

import logging

import numpy as np

from maxtoki.errors import MaxtokiError
from maxtoki.vocab import Vocabulary

logger = logging.getLogger(__name__)

MAX_CELLS = 10_000  # a random sample beyond this: the axes of variation settle long before
AXES = 16  # the main axes only: with all 64 of the tiny model's, the minor ones (noise on few cells) made it
# easier to recognise training cells (HSMM, 510-token cells: 16.5 h with 64 axes, 14.0 with 16, 13.4 with 8)


def cell_gene_lists(location: str, vocab: Vocabulary, max_cells: int = MAX_CELLS, seed: int = 0
                    ) -> list[np.ndarray]:
    """The gene tokens of each cell (or of a random ``max_cells`` of them) of a cell store, in rank order."""
    from maxtoki.data.paragraphs.cell_store import CellStore

    store = CellStore(location)
    if store.vocabulary().sha256 != vocab.sha256:
        raise MaxtokiError(f"model.gene_embeddings_from {location}: cells of another vocabulary than the model's")
    rows = np.arange(len(store))
    if len(rows) > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_cells, replace=False))
    cells = []
    for row in rows:
        ids = np.asarray(store[int(row)]["input_ids"], dtype=np.int64)
        cells.append(ids[vocab.is_gene[ids]])
    return cells


def principal_gene_loadings(cells: list[np.ndarray], vocab: Vocabulary, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(genes seen, their loadings): each gene's coordinates on the top ``dim`` principal axes of the centred
    rank-score matrix, scaled by the axes' singular values (fewer axes where there are fewer cells or genes;
    the remaining columns are 0)."""
    from scipy.sparse.linalg import LinearOperator, svds

    from maxtoki.inference.ceiling_baseline import rank_score_matrix

    scores = rank_score_matrix(cells, vocab).tocsc()
    seen = np.flatnonzero(scores.getnnz(axis=0) > 0)
    matrix = scores[:, seen].astype(np.float64)
    mean = np.asarray(matrix.mean(axis=0)).ravel()
    rank = min(dim, matrix.shape[0] - 1, matrix.shape[1] - 1)
    loadings = np.zeros((len(seen), dim))
    if rank < 1:
        return seen, loadings
    centred = LinearOperator(matrix.shape, dtype=np.float64,
                             matvec=lambda v: matrix @ v.ravel() - mean @ v.ravel(),
                             rmatvec=lambda u: matrix.T @ u.ravel() - mean * u.ravel().sum())
    _, values, axes = svds(centred, k=rank, random_state=np.random.default_rng(0))
    order = np.argsort(values)[::-1]
    loadings[:, :rank] = (axes[order] * values[order, None]).T
    return seen, loadings


def init_gene_embeddings(model, location: str, vocab: Vocabulary, axes: int = AXES) -> None:
    """Overwrite the input embeddings of the genes that occur in the cells at ``location`` with their loadings on
    the top ``axes`` principal axes (0 in the other dimensions), scaled to the model's initialisation spread (other
    rows keep their random initialisation)."""
    import torch

    weight = model.get_input_embeddings().weight
    if weight.device.type == "meta":
        raise MaxtokiError("model.gene_embeddings_from needs the model built on a device (init_device cpu); with "
                           "meta initialisation (FSDP) leave it null")
    if not 1 <= axes <= weight.shape[1]:
        raise MaxtokiError(f"model.gene_embedding_axes {axes}: give 1 to the model's width, {weight.shape[1]}")
    seen, main = principal_gene_loadings(cell_gene_lists(location, vocab), vocab, axes)
    loadings = np.zeros((len(seen), weight.shape[1]))
    loadings[:, :axes] = main
    spread = float(loadings.std())
    if spread == 0:
        logger.info(f"gene embeddings: {location} has too few cells for principal axes; kept random")
        return
    scale = model.config.initializer_range / spread
    with torch.no_grad():
        weight[torch.as_tensor(seen)] = torch.as_tensor(loadings * scale, dtype=weight.dtype, device=weight.device)
    logger.info(f"gene embeddings of {len(seen):,} genes from the principal axes of the cells in {location}")
