"""The data-preparation pipelines run end to end (demo set, and a slice of the real data)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from tests.conftest import run_kedro

pytestmark = pytest.mark.slow


def _check_outputs(project, dataset="synthetic_demo"):
    manifest = pd.read_csv(project / f"data/02_intermediate/{dataset}/manifest.csv", keep_default_na=False)
    splits = pd.read_csv(project / f"data/03_primary/{dataset}/split_table.csv", keep_default_na=False)
    table = pd.read_csv(project / f"data/05_model_input/{dataset}/model_input_table.csv", keep_default_na=False)
    assert (project / f"data/08_reporting/{dataset}/rejected_files.csv").exists()
    assert set(splits["image_id"]) == set(manifest["image_id"]) == set(table["image_id"])
    assert (splits.groupby("group_id")["split"].nunique() == 1).all()
    assert all((project / path).exists() for path in table["image_path"])
    return manifest, table


def test_demo_set_runs_from_nothing(kedro_project):
    run_kedro(kedro_project, "data_preparation")
    manifest, table = _check_outputs(kedro_project)
    assert manifest["is_synthetic"].all()
    assert set(manifest["task"]) == {"cxr", "ct"}
    assert (table.loc[table["task"] == "cxr", "mask_path"] != "").all()


def test_slice_of_shared_data(kedro_project, shared_data, tmp_path):
    """30 images of each task, copied to a temp folder with their manifest rows and a bad file."""
    source = pd.read_csv(shared_data / "manifest.csv", keep_default_na=False)
    rows = source.groupby(["task", "label"]).head(6).reset_index(drop=True)
    raw = tmp_path / "raw"
    for column in ("path", "mask_path"):
        for relative in rows[column][rows[column] != ""]:
            (raw / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shared_data / relative, raw / relative)
    shutil.copy(shared_data / "ieee8023_subset_metadata.csv", raw)
    broken = "cxr_classification/normal/broken.png"
    (raw / broken).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows = pd.concat([rows, pd.DataFrame([{**rows.iloc[-1].to_dict(), "path": broken, "mask_path": ""}])])
    rows.to_csv(raw / "manifest.csv", index=False)

    run_kedro(kedro_project, "data_preparation", env="shared_data", params={"raw_images_path": str(raw)})
    manifest, _ = _check_outputs(kedro_project, dataset="raw")  # named after the folder
    assert len(manifest) == len(rows) - 1
    rejected = pd.read_csv(kedro_project / "data/08_reporting/raw/rejected_files.csv")
    assert rejected["file"].tolist() == [f"{raw}/{broken}"]
    ieee = manifest[manifest["source"].str.startswith("ieee8023")]
    assert ieee["group_id"].str.startswith("patient:").all()
