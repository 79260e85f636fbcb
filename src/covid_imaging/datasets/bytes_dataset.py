"""A Kedro dataset that reads and writes raw file bytes through fsspec.

It is the leaf dataset of the raw-image ``PartitionedDataset``: the same code reads a
local folder, ``abfs://container/prefix`` on Azure Blob Storage, or any other fsspec
protocol. Decoding is left to the nodes, so a corrupt file becomes a row in the
rejected-files report instead of an exception inside the catalog.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io.core import AbstractDataset, DatasetError, get_filepath_str, get_protocol_and_path

from covid_imaging.datasets.atomic import atomic_write_bytes


class BytesDataset(AbstractDataset[bytes, bytes]):
    """Loads a file as ``bytes``; saves ``bytes`` atomically (temp name, then rename)."""

    def __init__(
        self,
        filepath: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, path = get_protocol_and_path(filepath)
        self._protocol = protocol
        self._filepath = PurePosixPath(path)
        self._fs = fsspec.filesystem(protocol, **(credentials or {}), **(fs_args or {}))
        self.metadata = metadata

    def load(self) -> bytes:
        path = get_filepath_str(self._filepath, self._protocol)
        try:
            with self._fs.open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError as error:
            raise DatasetError(f"{self._protocol}://{path}: file not found") from error

    def save(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray):
            raise DatasetError(f"{self._filepath}: BytesDataset saves bytes, got {type(data).__name__}")
        path = get_filepath_str(self._filepath, self._protocol)
        atomic_write_bytes(self._fs, path, bytes(data))

    def _exists(self) -> bool:
        return self._fs.exists(get_filepath_str(self._filepath, self._protocol))

    def _describe(self) -> dict[str, Any]:
        # Never include credentials here: Kedro logs and Kedro-Viz show this dict.
        return {"filepath": str(self._filepath), "protocol": self._protocol}
