"""The documented way to write outputs to a container: an abfs:// catalog override."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.io import DataCatalog

from covid_imaging.azure.credentials import BlobCredentials


@pytest.mark.parametrize("via", ["env_var", "credentials"])
def test_csv_output_round_trips_through_abfs(
    via: str,
    container: str,
    connection_string: str,
    blob_credentials: BlobCredentials,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = {
        "type": "covid_imaging.datasets.atomic_csv.AtomicCSVDataset",
        "filepath": f"abfs://{container}/outputs/{via}/manifest.csv",
    }
    credentials = {}
    if via == "env_var":
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)
    else:
        entry["credentials"] = "azure_storage"
        credentials = {"azure_storage": blob_credentials.adlfs_kwargs()}
    catalog = DataCatalog.from_config({"manifest": entry}, credentials=credentials)
    frame = pd.DataFrame({"image_key": ["cxr/a.png", "cxr/b.png"], "label": ["covid", ""]})
    catalog.save("manifest", frame)
    pd.testing.assert_frame_equal(catalog.load("manifest"), frame)
    names = [
        b.name
        for b in blob_credentials.service_client().get_container_client(container).list_blobs()
    ]
    assert names == [f"outputs/{via}/manifest.csv"]
