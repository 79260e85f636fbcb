"""A Kedro dataset that reads and writes raw file bytes through fsspec.

It is the leaf dataset of the raw-image ``PartitionedDataset``: the same code reads a
local folder, ``abfs://container/prefix`` on Azure Blob Storage, or any other fsspec
protocol. Decoding is left to the nodes, so a corrupt file becomes a row in the
rejected-files report instead of an exception inside the catalog.

A file that cannot be read at all (dangling or looping symbolic link, a folder, no
permission, over the size limit) raises :class:`UnreadableFileError`, whose message is
the problem alone; ingestion turns it into a rejected-files row.
"""

from __future__ import annotations

import errno
import os
from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io.core import AbstractDataset, DatasetError, get_filepath_str, get_protocol_and_path

from covid_imaging.datasets.atomic import atomic_write_bytes

# Far above any single radiograph or CT slice (tens of MB), low enough that one stray
# disk image or video in the raw folder cannot exhaust memory.
DEFAULT_MAX_BYTES = 1 << 30


class UnreadableFileError(DatasetError):
    """The file is listed but its bytes cannot be read; ``reason`` says why, without the path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def _describe_os_error(error: OSError, path: str) -> str:
    if error.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if isinstance(error, FileNotFoundError) and os.path.islink(path):
        return f"dangling symbolic link (its target {os.readlink(path)!r} does not exist)"
    if isinstance(error, FileNotFoundError):
        return "file not found (deleted after it was listed?)"
    if isinstance(error, IsADirectoryError):
        return "a folder, not a file"
    if isinstance(error, PermissionError):
        return "permission denied"
    return f"unreadable ({error.strerror or type(error).__name__})"


def require_bytes(path: object, data: object) -> bytes:
    """``data`` as bytes, or a DatasetError naming the file (what every BytesDataset write checks)."""
    if not isinstance(data, bytes | bytearray):
        raise DatasetError(f"{path}: BytesDataset saves bytes, got {type(data).__name__}")
    return bytes(data)


class BytesDataset(AbstractDataset[bytes, bytes]):
    """Loads a file as ``bytes``; saves ``bytes`` atomically (temp name, then rename)."""

    def __init__(
        self,
        filepath: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        protocol, path = get_protocol_and_path(filepath)
        self._protocol = protocol
        self._filepath = PurePosixPath(path)
        self._fs = fsspec.filesystem(protocol, **(credentials or {}), **(fs_args or {}))
        self._max_bytes = int(max_bytes)
        self.metadata = metadata

    def load(self) -> bytes:
        path = get_filepath_str(self._filepath, self._protocol)
        try:
            with self._fs.open(path, "rb") as handle:
                # The size from the open handle: a separate fs.size() cost as much again per file.
                size = handle.seek(0, os.SEEK_END) if handle.seekable() else None
                if size is not None and size > self._max_bytes:
                    raise UnreadableFileError(
                        path, f"{size:,} bytes, over the {self._max_bytes:,}-byte limit of the raw-file dataset"
                    )
                if size is not None:
                    handle.seek(0)
                data = handle.read()
        except OSError as error:
            raise UnreadableFileError(path, _describe_os_error(error, path)) from error
        if len(data) > self._max_bytes:  # grew after the size check, or the size was unknown
            raise UnreadableFileError(path, f"over the {self._max_bytes:,}-byte limit of the raw-file dataset")
        return data

    def save(self, data: bytes) -> None:
        path = get_filepath_str(self._filepath, self._protocol)
        atomic_write_bytes(self._fs, path, require_bytes(self._filepath, data))

    def _exists(self) -> bool:
        return self._fs.exists(get_filepath_str(self._filepath, self._protocol))

    def _describe(self) -> dict[str, Any]:
        # Never include credentials here: Kedro logs and Kedro-Viz show this dict.
        return {"filepath": str(self._filepath), "protocol": self._protocol}

    def __repr__(self) -> str:
        # Kedro formats str(self) for a debug line on every load and save; its generic repr
        # (pprint and URL redaction) held the GIL longer per image than decoding the image.
        # Same text; a path that could carry credentials still goes through Kedro's redaction.
        path = str(self._filepath)
        if any(character in path for character in "@?#"):
            return super().__repr__()
        return f"{type(self).__module__}.{type(self).__name__}(filepath={path!r}, protocol={self._protocol!r})"
