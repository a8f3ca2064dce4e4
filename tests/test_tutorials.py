"""Tutorials run top to bottom on CPU, as a reader would run them."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

SLOW = {"analysis"}  # trains a model that has learned time: about ten minutes
TUTORIALS = [pytest.param(p, marks=[pytest.mark.slow] if p.stem in SLOW else [], id=p.stem)
             for p in sorted((Path(__file__).parent.parent / "tutorials").glob("*.ipynb"))]


@pytest.mark.parametrize("notebook", TUTORIALS)
def test_tutorial_runs(notebook, tmp_path):
    nb = nbformat.read(notebook, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "clear outputs in git"
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(o.get("data", {}).get("image/png") for cell in nb.cells for o in cell.get("outputs", []))
