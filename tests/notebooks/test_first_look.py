"""notebooks/first_look.ipynb runs top to bottom after a tiny segmentation run (no cell skips)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import PROJECT_ROOT, run_kedro
from tests.pipelines.segmentation.test_pipeline_run import TINY

pytestmark = pytest.mark.slow


def test_first_look_notebook_executes_on_a_fresh_run(kedro_project):
    run_kedro(kedro_project, "segmentation", params=TINY)  # what the notebook reads
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "first_look.ipynb", as_version=4)
    (kedro_project / "notebooks").mkdir()
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(kedro_project / "notebooks")}},  # as `kedro jupyter lab` opens it
    )
    client.execute()  # raises CellExecutionError naming the cell on any error

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "\n".join(str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", "")) for output in outputs)
    assert "data set 'synthetic_demo'" in text
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 3  # one sample figure per trained model
    for model in ("unet", "fcn", "deeplabv3", "ensemble"):
        assert model in text
    assert "segmentation.unet" in text and "FINISHED" in text  # the MLflow runs table
