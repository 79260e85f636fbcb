"""`kedro run --pipeline=segmentation --env=azure` on a tiny data set held in Azurite.

The project's own conf/ (base + azure) is copied to a temporary project folder, so the
run writes its data, cache and MLflow sqlite store there. Credentials come only from
AZURE_STORAGE_CONNECTION_STRING.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from kedro_datasets.partitions import PartitionedDataset

from covid_imaging.azure.credentials import AZURITE_KEY, BlobCredentials
from covid_imaging.azure.upload import upload_folder
from covid_imaging.datasets.atomic_csv import AtomicCSVDataset
from covid_imaging.pipelines.segmentation.pipeline import ENSEMBLE, SEGMENTATION_MODELS

ROOT = Path(__file__).resolve().parents[2]
MODELS = SEGMENTATION_MODELS
# Small enough for 2 CPU cores: 32 px inputs, one epoch.
TINY = ["preprocessing.resize.size=64"] + [
    item
    for model in MODELS
    for item in (
        f"segmentation.{model}.data.image_size=32",
        f"segmentation.{model}.data.batch_size=4",
        f"segmentation.{model}.data.n_sample_predictions=2",
        f"segmentation.{model}.training.epochs=1",
        f"segmentation.{model}.training.verbose=0",
    )
]


def _write_tiny_set(root: Path) -> None:
    """The demo generator at a tiny size when it exists, else the same layout with cv2."""
    try:
        from covid_imaging.demo.synthetic import generate_demo_dataset

        files = generate_demo_dataset(
            n_per_class=6, cxr_size=64, n_ct_per_class=4, ct_size=64, seed=3, images_per_patient=1
        )
        for key, data in files.items():
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(data)
        return
    except ImportError:
        pass
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:64, 0:64]
    patient = 0
    for label in ("normal", "covid", "bacterial", "viral"):
        for _ in range(6):
            patient += 1
            name = f"synthetic_cxr_p{patient:04d}_1.png"
            image = (
                120
                + 60 * np.sin(xx / (5 + patient % 4)) * np.cos(yy / 9)
                + rng.normal(0, 8, (64, 64))
            )
            mask = np.zeros((64, 64), np.uint8)
            cv2.ellipse(mask, (21, 32), (8, 20), 0, 0, 360, 255, -1)
            cv2.ellipse(mask, (43, 32), (8, 20), 0, 0, 360, 255, -1)
            for kind, pixels in (
                ("images", np.clip(image, 0, 255).astype(np.uint8)),
                ("masks", mask),
            ):
                (root / "cxr" / label / kind).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "cxr" / label / kind / name), pixels)
    for label in ("covid", "non_covid"):
        for _ in range(4):
            patient += 1
            (root / "ct" / label).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(
                str(root / "ct" / label / f"synthetic_ct_s{patient:04d}_1.png"),
                rng.integers(0, 256, (64, 64), dtype=np.uint8),
            )


def _copy_project(target: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    # conf/local may hold the developer's own credentials: never copied.
    shutil.copytree(
        ROOT / "conf", target / "conf", ignore=shutil.ignore_patterns("local", "*credentials*")
    )
    (target / "conf" / "local").mkdir()
    (target / "src").mkdir()  # Kedro insists on it; the package comes from the install


@pytest.mark.slow
def test_kedro_run_segmentation_env_azure(
    tmp_path: Path, connection_string: str, blob_credentials: BlobCredentials
) -> None:
    if not (ROOT / "src/covid_imaging/pipeline_registry.py").read_text().count('"segmentation"'):
        pytest.skip("the segmentation pipeline is not registered yet")
    project = tmp_path / "project"
    project.mkdir()
    _copy_project(project)
    azure_globals = yaml.safe_load((ROOT / "conf/azure/globals.yml").read_text())
    container, prefix = azure_globals["azure_container"], azure_globals["azure_prefix"]

    folder = tmp_path / "demo"
    _write_tiny_set(folder)
    blob_credentials.service_client().create_container(container)
    report = upload_folder(folder, container, prefix, blob_credentials)
    assert report.uploaded and not report.failed

    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": connection_string}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kedro",
            "run",
            "--pipelines=segmentation",
            "--env=azure",
            "--params",
            ",".join(TINY),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert AZURITE_KEY not in output and "AccountKey=Eby8" not in output

    # The manifest equals the one built from the same files on disk.
    from covid_imaging.pipelines.ingestion.nodes import build_manifest

    params = yaml.safe_load((ROOT / "conf/base/parameters/ingestion.yml").read_text())["ingestion"]
    params["raw_location"] = f"abfs://{container}/{prefix}"
    local = PartitionedDataset(
        path=str(folder), dataset="covid_imaging.datasets.bytes_dataset.BytesDataset"
    )
    expected, _ = build_manifest(local.load(), params)
    AtomicCSVDataset(filepath=str(tmp_path / "expected.csv")).save(expected)
    manifest = AtomicCSVDataset(filepath=str(project / f"data/02_intermediate/azure_{container}/manifest.csv")).load()
    pd.testing.assert_frame_equal(
        manifest, AtomicCSVDataset(filepath=str(tmp_path / "expected.csv")).load()
    )
    assert (
        len(manifest) >= 30
        and manifest["image_uri"].str.startswith(f"abfs://{container}/{prefix}/").all()
    )
    comparison = pd.read_csv(project / f"data/08_reporting/azure_{container}/segmentation_comparison.csv")
    assert set(comparison["model"]) == {*MODELS, ENSEMBLE}
    assert list((project / "data/.blob_cache").rglob("index.json"))

    # Nothing secret in MLflow (params, tags, metrics keys).
    with sqlite3.connect(project / "mlflow.db") as db:
        rows = db.execute(
            "SELECT key, value FROM params UNION ALL SELECT key, value FROM tags"
        ).fetchall()
    assert rows, "kedro-mlflow logged nothing"
    dumped = repr(rows)
    assert AZURITE_KEY not in dumped and "AccountKey" not in dumped and "sig=" not in dumped
