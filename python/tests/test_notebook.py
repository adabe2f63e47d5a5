"""examples/bias_probing.ipynb runs top to bottom (its cells assert the API's numbers)."""

from __future__ import annotations

import nbformat
from conftest import REPO, SMOL
from nbclient import NotebookClient

NOTEBOOK = REPO / "examples" / "bias_probing.ipynb"


def test_notebook_outputs_are_stripped() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_runs() -> None:
    assert SMOL.exists(), "run ./scripts/fetch-models.sh"
    nb = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.outputs)
    for name in ("t1", "t2", "t3", "t4"):
        assert f"{name} {{" in printed
