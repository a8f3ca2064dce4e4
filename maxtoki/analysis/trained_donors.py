"""Which donors a model trained on, read from the paragraphs it was trained on.

A cell the model trained on is read closer to its true time than an unseen one, so an analysis that
compares predictions (a control against a case) must know which of its cells were seen. Every
paragraph output keeps its blueprint (``blueprint.npz``: the stage-1 index of every cell of every
example) and names its cell shards in its manifest (``cells.location``); the donors are then the
donor column of those cells, read from the shards when they keep it, else found through the cells'
``cell_id`` among the analysis cells.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from maxtoki import storage
from maxtoki.analysis.cells import AnalysisCells
from maxtoki.data.paragraphs.blueprint import Blueprint
from maxtoki.data.paragraphs.build import BLUEPRINT_NAME, SPLITS_NAME
from maxtoki.data.paragraphs.cell_store import CellStore
from maxtoki.errors import MaxtokiError


def trained_donors(paragraphs: list[str], donor_column: str, cells: AnalysisCells) -> set[str]:
    """The ``donor_column`` values of every cell in the given training paragraphs."""
    donors: set[str] = set()
    for location in paragraphs:
        donors |= _donors_of(str(location).rstrip("/"), donor_column, cells)
    return donors


def _donors_of(location: str, donor_column: str, cells: AnalysisCells) -> set[str]:
    manifest = _paragraph_manifest(location)
    used = np.unique(_blueprint(location).cell_indices)
    source = manifest.get("cells", {}).get("location")
    try:
        store = CellStore(source)
    except MaxtokiError as exc:
        raise MaxtokiError(f"--train-data {location}: its cell shards ({source}) cannot be read ({exc}); "
                           "they tell which donors the model trained on") from None
    if len(store) <= used.max(initial=-1):
        raise MaxtokiError(f"--train-data {location}: refers to cells beyond the {len(store)} cells of {source}; "
                           "the cell shards were rewritten after the paragraphs were made")
    wanted = np.zeros(len(store), dtype=bool)
    wanted[used] = True
    if donor_column in store.columns:
        return {str(sample[donor_column]) for i, sample in enumerate(store) if wanted[i]}
    ids = [str(sample["cell_id"]) for i, sample in enumerate(store) if wanted[i]]
    found = cells.obs.index.intersection(ids)
    if not len(found):
        raise MaxtokiError(f"--train-data {location}: its cells ({source}) keep no column {donor_column!r} and none "
                           f"of their {len(ids)} cell ids is among the analysis cells; tokenize with --keep-obs "
                           f"{donor_column}, or analyse the cells the model was trained with")
    return set(cells.obs.loc[found, donor_column].astype(str))


def _paragraph_manifest(location: str) -> dict:
    from maxtoki.data.loaders import read_data_manifest

    try:
        manifest = read_data_manifest(location)
    except MaxtokiError:
        if _exists(location, SPLITS_NAME):
            raise MaxtokiError(f"--train-data {location}: holds several splits; give the one the model was trained "
                               f"on, e.g. {location}/train") from None
        raise
    if manifest.get("kind") != "maxtoki.paragraphs":
        raise MaxtokiError(f"--train-data {location}: not paragraph shards (kind {manifest.get('kind')!r}); give "
                           "the paragraphs the model was trained on (maxtoki data paragraphs)")
    return manifest


def _blueprint(location: str) -> Blueprint:
    if not _exists(location, BLUEPRINT_NAME):
        raise MaxtokiError(f"--train-data {location}: has no {BLUEPRINT_NAME}; remake the paragraphs with this "
                           "version of maxtoki")
    if storage.is_remote(location):
        return Blueprint.load(io.BytesIO(storage.download_bytes(f"{location}/{BLUEPRINT_NAME}")))
    return Blueprint.load(f"{location}/{BLUEPRINT_NAME}")


def _exists(location: str, name: str) -> bool:
    if storage.is_remote(location):
        return storage.object_exists(f"{location}/{name}")
    return (Path(location) / name).is_file()
