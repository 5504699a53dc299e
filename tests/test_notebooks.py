"""The notebooks run top to bottom offline, in a fresh kernel, as a reader would run them."""

from __future__ import annotations

from pathlib import Path

import pytest
from guards import HANG_GUARD_S

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inference.ipynb", "finetune.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # Offline: nothing may come from the Hub, and the demo branch of the inference notebook is the one tested.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("LXMERT_VQA_MODEL", raising=False)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        f"{name} holds outputs; clear them before committing."
    )
    client = nbclient.NotebookClient(
        notebook, timeout=HANG_GUARD_S, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
