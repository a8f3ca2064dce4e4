"""Tutorials run top to bottom on CPU, as a reader would run them."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

SLOW = {"analysis"}  # trains a model that has learned time: about ten minutes
# The quickstart trains the demo's model (about five minutes here); the default run trains the smaller one
# that tests/test_pipeline.py guards (128-token cells, 400 stage-2 batches: about one minute) and checks
# that it still beats the training-mean baseline. `-m slow` runs the notebook exactly as shipped.
QUICKSTART_OPTIONS = 'PipelineOptions(time_column="hours", allow_non_integer=True, min_expression=0.1'
REDUCED = {"quickstart": (QUICKSTART_OPTIONS, QUICKSTART_OPTIONS + ", cell_length=128, temporal_batches=400")}
NOTEBOOKS = sorted((Path(__file__).parent.parent / "tutorials").glob("*.ipynb"))
TUTORIALS = [pytest.param(p, False, marks=[pytest.mark.slow] if p.stem in SLOW else [], id=p.stem)
             for p in NOTEBOOKS if p.stem not in REDUCED]
TUTORIALS += [param for p in NOTEBOOKS if p.stem in REDUCED
              for param in (pytest.param(p, True, id=f"{p.stem}-reduced"),
                            pytest.param(p, False, marks=[pytest.mark.slow], id=p.stem))]


@pytest.mark.parametrize("notebook, reduced", TUTORIALS)
def test_tutorial_runs(notebook, reduced, tmp_path):
    nb = nbformat.read(notebook, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "clear outputs in git"
    if reduced:
        shipped, smaller = REDUCED[notebook.stem]
        cells = [cell for cell in nb.cells if shipped in cell.source]
        assert len(cells) == 1, f"{notebook.name}: the cell with {shipped} changed; update REDUCED"
        cells[0].source = cells[0].source.replace(shipped, smaller)
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(o.get("data", {}).get("image/png") for cell in nb.cells for o in cell.get("outputs", []))
    if notebook.stem == "quickstart":  # the model it trains places held-out cells in time
        printed = "".join(o["text"] for cell in nb.cells if "scores_table(metrics" in cell.source
                          for o in cell.outputs if o.get("name") == "stdout")
        assert "The model beats" in printed and "does not beat" not in printed
