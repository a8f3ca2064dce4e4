"""Which cells (by cell id) and which donors a paragraph or prompt data set uses: what leak tests compare."""

from maxtoki.data.paragraphs.cell_store import CellStore


def cells_and_donors(cells, paragraphs) -> tuple[set[str], set[str]]:
    """Cell ids and groups (donors; none for cells tokenized without group columns) of every cell the examples of
    ``paragraphs`` use, looked up in stage-1 ``cells``."""
    stage1 = CellStore(str(cells))
    indices = {int(i) for example in CellStore(str(paragraphs)) for i in example["cell_indices"]}
    used = [stage1[i] for i in sorted(indices)]
    return {cell["cell_id"] for cell in used}, {cell["group"] for cell in used if "group" in cell}
