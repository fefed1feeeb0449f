"""docs/tutorial.ipynb runs top to bottom in a real Jupyter kernel, and is committed with its outputs."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the test extra: pip install -e '.[test]'")
pytest.importorskip("ipykernel", reason="the notebook test needs the test extra: pip install -e '.[test]'")


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_committed_notebook_shows_its_outputs():
    """It renders on a code host with what it printed and drew, from a run in which no cell failed."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cells = code_cells(notebook)
    assert len(cells) >= 8
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), "not run top to bottom"
    assert not any("execution" in cell.metadata for cell in cells), "saved with timings: see docs/testing.md"
    outputs = [output for cell in cells for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 4  # curves, mistakes, filters, layers
    assert not any("cli.py" in cell.source and "import" in cell.source for cell in cells)  # the library API only


def test_the_notebook_runs_in_a_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the run folder the notebook makes goes here
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in code_cells(notebook):
        cell.outputs = []
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    seconds = time.perf_counter() - start
    texts = "".join(output.get("text", "") for cell in code_cells(notebook) for output in cell.outputs)
    assert "FAILED: bias" in texts and "recorded steps:" in texts and "same predictions:" in texts
    assert seconds < 90, f"the tutorial took {seconds:.0f} s; keep it short enough to run while reading"
