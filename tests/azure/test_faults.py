"""Each fault gives one clear line naming the container/blob and the problem."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from kedro.io.core import DatasetError

from covid_imaging.azure.azurite import AzuriteServer
from covid_imaging.azure.credentials import AZURITE_ACCOUNT, AZURITE_KEY, BlobCredentials
from covid_imaging.azure.dataset import CachedBlobImageDataset
from covid_imaging.azure.upload import upload_folder

WRONG_KEY = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3Jvbmc="


def _load_error(tmp_path: Path, **kwargs: object) -> str:
    dataset = CachedBlobImageDataset(
        cache_dir=str(tmp_path / "cache"), max_attempts=2, retry_backoff_s=0.01, **kwargs
    )  # type: ignore[arg-type]
    with pytest.raises(DatasetError) as info:
        dataset.load()
    message = str(info.value)
    assert "\n" not in message, message
    assert AZURITE_KEY not in message and WRONG_KEY not in message
    return message


def _sas(container: str, expiry: datetime, permission: ContainerSasPermissions) -> str:
    return generate_container_sas(
        AZURITE_ACCOUNT, container, account_key=AZURITE_KEY, permission=permission, expiry=expiry
    )


def _sas_connection_string(azurite: AzuriteServer, sas: str) -> str:
    return f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={sas}"


@pytest.fixture
def uploaded(png_folder: Path, container: str, blob_credentials: BlobCredentials) -> str:
    upload_folder(png_folder, container, "raw/v1", blob_credentials)
    return container


def test_wrong_account_key(uploaded: str, azurite: AzuriteServer, tmp_path: Path) -> None:
    bad = azurite.connection_string.replace(AZURITE_KEY, WRONG_KEY)
    message = _load_error(
        tmp_path, container=uploaded, prefix="raw/v1", credentials={"connection_string": bad}
    )
    assert f"container '{uploaded}'" in message and "access denied" in message
    assert (
        "the connection string from the catalog entry's credentials is wrong, expired, or lacks list/read permission"
        in message
    )


def test_expired_sas_token(uploaded: str, azurite: AzuriteServer, tmp_path: Path) -> None:
    sas = _sas(
        uploaded,
        datetime.now(UTC) - timedelta(hours=1),
        ContainerSasPermissions(read=True, list=True),
    )
    message = _load_error(
        tmp_path,
        container=uploaded,
        prefix="raw/v1",
        credentials={"connection_string": _sas_connection_string(azurite, sas)},
    )
    assert "access denied" in message and "expired" in message
    assert sas.split("sig=")[1][:10] not in message


def test_valid_sas_token_works(uploaded: str, azurite: AzuriteServer, tmp_path: Path) -> None:
    sas = _sas(
        uploaded,
        datetime.now(UTC) + timedelta(hours=1),
        ContainerSasPermissions(read=True, list=True),
    )
    dataset = CachedBlobImageDataset(
        container=uploaded,
        prefix="raw/v1",
        cache_dir=str(tmp_path / "cache"),
        credentials={"connection_string": _sas_connection_string(azurite, sas)},
    )
    assert len(dataset.load()) == 12


def test_missing_container(azurite: AzuriteServer, tmp_path: Path) -> None:
    message = _load_error(
        tmp_path,
        container="no-such-container",
        prefix="raw/v1",
        credentials={"connection_string": azurite.connection_string},
    )
    assert "container 'no-such-container' does not exist on account 'devstoreaccount1'" in message


def test_empty_prefix_says_where_it_looked(
    uploaded: str, azurite: AzuriteServer, tmp_path: Path
) -> None:
    message = _load_error(
        tmp_path,
        container=uploaded,
        prefix="raw/v2",
        credentials={"connection_string": azurite.connection_string},
    )
    assert f"no blobs found under abfs://{uploaded}/raw/v2/" in message
    assert azurite.blob_endpoint in message and "covid_imaging.azure.upload" in message


def test_blank_prefix_is_refused(azurite: AzuriteServer) -> None:
    with pytest.raises(DatasetError, match="'prefix' is empty"):
        CachedBlobImageDataset(
            container="c",
            prefix=" / ",
            credentials={"connection_string": azurite.connection_string},
        )


def test_unreadable_blob_names_the_blob(
    uploaded: str, azurite: AzuriteServer, tmp_path: Path
) -> None:
    """A SAS that may list but not read: listing works, every download is refused."""
    sas = _sas(uploaded, datetime.now(UTC) + timedelta(hours=1), ContainerSasPermissions(list=True))
    message = _load_error(
        tmp_path,
        container=uploaded,
        prefix="raw/v1",
        credentials={"connection_string": _sas_connection_string(azurite, sas)},
        max_workers=1,
    )
    assert "cannot read blob" in message and "blob 'raw/v1/" in message and ".png'" in message
    assert "access denied" in message


def test_unreachable_endpoint_is_retried_then_explained(tmp_path: Path) -> None:
    closed = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    message = _load_error(
        tmp_path, container="c", prefix="raw", credentials={"connection_string": closed}
    )
    assert "cannot reach http://127.0.0.1:9/devstoreaccount1" in message


def test_no_credentials_at_all(tmp_path: Path) -> None:
    message = _load_error(tmp_path, container="c", prefix="raw")
    assert (
        "no Azure Storage credentials found" in message
        and "AZURE_STORAGE_CONNECTION_STRING" in message
    )
    assert "container 'c'" in message
