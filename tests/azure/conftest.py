"""Fixtures for the Azure tests: a real Azurite blob emulator, fresh containers, PNG folders.

Azurite is installed by ``bash .ci/install_azurite.sh``. When Node or Azurite is missing
the tests skip with the reason, except under CI (env var ``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from covid_imaging.azure.azurite import AzuriteServer, missing_reason
from covid_imaging.azure.credentials import BlobCredentials, credentials_from_mapping


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/azure" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.azure)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """A running ``azurite-blob`` on a free 127.0.0.1 port, stopped by PID at the end."""
    reason = missing_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the Azure tests cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    server = AzuriteServer(workspace=tmp_path_factory.mktemp("azurite"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def connection_string(azurite: AzuriteServer) -> str:
    """Connection string of Azurite's well-known dev account."""
    return azurite.connection_string


@pytest.fixture
def blob_credentials(connection_string: str) -> BlobCredentials:
    return credentials_from_mapping(
        {"connection_string": connection_string}, "test connection string"
    )


@pytest.fixture
def container(blob_credentials: BlobCredentials) -> str:
    """A new, empty container (unique per test, so tests never see each other's blobs)."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    blob_credentials.service_client().create_container(name)
    return name


@pytest.fixture(autouse=True)
def _no_ambient_azure_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's own credentials (env or conf/local) out of the tests."""
    for var in (
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
    ):
        monkeypatch.delenv(var, raising=False)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)


def write_png(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


@pytest.fixture
def png_folder(tmp_path: Path) -> Path:
    """A small raw-image tree shaped like the real one (class/images, class/masks)."""
    root = tmp_path / "raw"
    seed = 0
    for group in ("cxr/covid/images", "cxr/covid/masks", "cxr/normal/images", "ct/covid"):
        for index in range(3):
            write_png(root / group / f"img_{index:03d}.png", seed)
            seed += 1
    return root


@pytest.fixture
def make_png_folder(tmp_path: Path) -> Callable[[str, int], Path]:
    def make(name: str, count: int) -> Path:
        root = tmp_path / name
        for index in range(count):
            write_png(root / "cxr" / "covid" / "images" / f"x{index:04d}.png", 1000 + index)
        return root

    return make
