"""The account key and SAS signature never reach logs, stderr/stdout, errors or _describe()."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from kedro.io.core import DatasetError

from covid_imaging.azure.azurite import AzuriteServer
from covid_imaging.azure.credentials import AZURITE_ACCOUNT, AZURITE_KEY, BlobCredentials
from covid_imaging.azure.dataset import CachedBlobImageDataset
from covid_imaging.azure.upload import main


@pytest.fixture
def chatty_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Everything at DEBUG, including the SDK's HTTP logging and urllib3's request lines."""
    caplog.set_level(logging.DEBUG)
    for name in (
        "azure",
        "azure.core.pipeline.policies.http_logging_policy",
        "urllib3",
        "covid_imaging",
    ):
        caplog.set_level(logging.DEBUG, logger=name)
    handler = logging.StreamHandler()  # writes to stderr, which capfd sees
    logging.getLogger().addHandler(handler)
    yield caplog
    logging.getLogger().removeHandler(handler)


def test_key_absent_from_logs_output_errors_and_describe(
    png_folder: Path,
    container: str,
    blob_credentials: BlobCredentials,
    azurite: AzuriteServer,
    connection_string: str,
    tmp_path: Path,
    chatty_logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sig_sas = generate_container_sas(
        AZURITE_ACCOUNT,
        container,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    signature = sig_sas.split("sig=")[1].split("&")[0]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)
    assert main([str(png_folder), "--container", container, "--prefix", "raw/v1", "--verbose"]) == 0

    dataset = CachedBlobImageDataset(
        container=container, prefix="raw/v1", cache_dir=str(tmp_path / "c1")
    )
    assert len(dataset.load()) == 12
    sas_dataset = CachedBlobImageDataset(
        container=container,
        prefix="raw/v1",
        cache_dir=str(tmp_path / "c2"),
        credentials={
            "connection_string": f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={sig_sas}"
        },
    )
    assert len(sas_dataset.load()) == 12

    bad = CachedBlobImageDataset(
        container=container,
        prefix="raw/v1",
        max_attempts=1,
        credentials={"connection_string": connection_string.replace("Eby8", "Xby8")},
    )
    with pytest.raises(DatasetError) as info:
        bad.load()
    logging.getLogger("covid_imaging.test").exception("load failed: %s", info.value)
    logging.getLogger("covid_imaging.test").info(
        "config was %s", {"connection_string": connection_string}
    )

    out, err = capfd.readouterr()
    captured = "\n".join(
        [chatty_logs.text, out, err, str(info.value), repr(dataset), str(dataset._describe())]
    )
    assert (
        "GET /devstoreaccount1" in captured or "Request URL" in captured
    )  # the logs were really on
    for secret in (AZURITE_KEY, AZURITE_KEY[:20], signature, signature[:12]):
        assert secret not in captured
    assert set(dataset._describe()) == {"container", "prefix", "cache_dir", "max_workers"}


def test_catalog_built_dataset_describe_has_no_credentials(connection_string: str) -> None:
    from kedro.io import DataCatalog

    catalog = DataCatalog.from_config(
        {
            "raw_images": {
                "type": "covid_imaging.azure.dataset.CachedBlobImageDataset",
                "container": "c",
                "prefix": "raw",
                "credentials": "azure_storage",
            }
        },
        credentials={"azure_storage": {"connection_string": connection_string}},
    )
    dataset = catalog["raw_images"]
    assert AZURITE_KEY not in str(dataset) and AZURITE_KEY not in repr(dataset)
    assert AZURITE_KEY not in str(dataset._describe())
