"""`kedro run --pipelines=inference --env=azure --params=inference.source=<prefix>` on Azurite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from azure.core.exceptions import ResourceExistsError

from covid_imaging.azure.credentials import BlobCredentials
from covid_imaging.azure.upload import upload_folder
from tests.azure.test_end_to_end import _copy_project
from tests.inference.helpers import OLD_VERSION, save_version, threshold_model, write_images

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_inference_on_a_container_prefix(tmp_path: Path, connection_string: str, blob_credentials: BlobCredentials) -> None:
    project = tmp_path / "project"
    project.mkdir()
    _copy_project(project)
    container = yaml.safe_load((ROOT / "conf/azure/globals.yml").read_text())["azure_container"]
    # the models of the azure environment's data set (dataset_name in conf/azure/globals.yml)
    save_version(project, "segmentation", "unet", OLD_VERSION, threshold_model(bright_is_lung=True),
                 dataset=f"azure_{container}")
    folder = tmp_path / "new"
    sizes = write_images(folder)
    try:  # other Azure tests of this session may have created it already
        blob_credentials.service_client().create_container(container)
    except ResourceExistsError:
        pass
    assert not upload_folder(folder, container, "hospital/2026", blob_credentials).failed

    output = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--pipelines=inference", "--env=azure", "--params",
         f"inference.source=hospital/2026,inference.output={output},inference.classifiers=[],"
         "preprocessing.resize.size=64"],
        cwd=project, env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": connection_string},
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    (run,) = [p for p in output.iterdir() if not p.name.startswith(".")]
    predictions = pd.read_csv(run / "predictions.csv")
    assert sorted(predictions["image_id"]) == sorted(sizes)
    assert pd.read_csv(run / "rejected_files.csv")["file"].str.endswith("broken.png").tolist() == [True]
    assert (run / "masks" / "nested" / "b16.png").exists()
