"""One folder per run, ``<path>/<timestamp>/``, that appears only when it is complete.

:class:`RunFolderDataset` saves a mapping ``relative path -> content`` (bytes, str, or a
callable returning either; callables are called one at a time, in the mapping's order,
so memory stays bounded by one entry; a callable may also return a mapping of further
``relative path -> bytes | str`` entries, written in its place, its own key being only a
label: a batch of images whose file names are known once it is processed; or an iterator
of bytes/str pieces, written one after another into that one file: a table or a report
larger than memory) into a hidden sibling folder
``.<timestamp>.swap-<host>-<pid>-<random>`` and renames it to ``<timestamp>`` when every
file is written: a killed run never leaves a half-written run folder under its final
name, and the hidden folders of killed writers are removed by the next save. Timestamps
use Kedro's version format, so runs sort by time. Local paths only are atomic; on other
protocols the files are written directly under the run folder.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from kedro.io import AbstractDataset, DatasetError
from kedro.io.core import generate_timestamp, get_protocol_and_path

from covid_imaging.datasets.swapped_partitions import _SIDE_FOLDER, _is_orphan, _side_name

logger = logging.getLogger(__name__)
Content = bytes | str
RunFiles = Mapping[str, Content | Callable[[], Content | Mapping[str, Content] | Iterator[Content]]]


def _as_bytes(value: Any, key: str) -> bytes:
    value = value() if callable(value) else value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise DatasetError(f"run folder entry {key!r}: expected bytes or str, got {type(value).__name__}")


def _safe_relative(key: str) -> str:
    path = PurePosixPath(key)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise DatasetError(f"run folder entry {key!r} must be a relative path inside the run folder")
    return str(path)


def _entries(data: RunFiles) -> Iterator[tuple[str, Iterator[bytes]]]:
    """``(relative path, its bytes piece by piece)`` in order, expanding callables that
    return mappings (several files) or iterators (one file in pieces)."""
    for key, value in data.items():
        value = value() if callable(value) else value
        if isinstance(value, Mapping):
            for inner_key, inner in value.items():
                yield _safe_relative(inner_key), iter([_as_bytes(inner, inner_key)])
        elif isinstance(value, Iterator):
            yield _safe_relative(key), (_as_bytes(piece, key) for piece in value)
        else:
            yield _safe_relative(key), iter([_as_bytes(value, key)])


def _write(handle: Any, pieces: Iterator[bytes]) -> None:
    for piece in pieces:
        handle.write(piece)


def remove_orphaned_run_folders(root: str) -> list[str]:
    """Delete the hidden, incomplete run folders of killed writers under ``root``."""
    try:
        entries = os.listdir(root)
    except OSError:
        return []
    now, removed = time.time(), []
    for entry in entries:
        match = _SIDE_FOLDER.match(entry)
        if match and match["kind"] == "swap" and _is_orphan(root, entry, match, now):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
            removed.append(entry)
    return removed


class RunFolderDataset(AbstractDataset[RunFiles, dict[str, Path]]):
    """Writes each save into a new ``<path>/<timestamp>/`` folder, atomically (local paths).

    ``load()`` returns the files of the latest complete run as ``relative path -> Path``.
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        protocol, stripped = get_protocol_and_path(str(path))
        self._protocol = protocol
        self._path = stripped.rstrip("/")
        self._fs = fsspec.filesystem(protocol)
        self.metadata = metadata
        self.last_run_folder: str | None = None

    @property
    def _is_local(self) -> bool:
        return self._protocol in ("file", "local", None, "")

    def run_folders(self) -> list[str]:
        """Complete run folders, oldest first."""
        if not self._fs.exists(self._path):
            return []
        names = [PurePosixPath(p).name for p in self._fs.ls(self._path, detail=False)]
        return sorted(n for n in names if not n.startswith(".") and self._fs.isdir(f"{self._path}/{n}"))

    def load(self) -> dict[str, Path]:
        runs = self.run_folders()
        if not runs:
            raise DatasetError(f"No run folder under {self._path}")
        folder = Path(self._path) / runs[-1]
        return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}

    def save(self, data: RunFiles) -> None:
        name = generate_timestamp()
        target = f"{self._path}/{name}"
        if not self._is_local:
            for key, pieces in _entries(data):
                with self._fs.open(f"{target}/{key}", "wb") as handle:
                    _write(handle, pieces)
            self.last_run_folder = target
            return
        os.makedirs(self._path, exist_ok=True)
        remove_orphaned_run_folders(self._path)
        staging = os.path.join(self._path, _side_name(name, "swap"))
        os.mkdir(staging)
        try:
            for relative, pieces in _entries(data):
                destination = os.path.join(staging, relative)
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                with open(destination, "wb") as handle:
                    _write(handle, pieces)
            target = self._publish(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.last_run_folder = target
        logger.info("Inference outputs written to %s", target)

    def _publish(self, staging: str, target: str) -> str:
        """Rename ``staging`` to a run folder name no other save has taken; return it.

        Two saves in one millisecond share a timestamp: the later one waits for the
        next millisecond's name, so no run is refused or overwritten.
        """
        while True:
            if not os.path.exists(target):
                try:
                    os.rename(staging, target)  # the run folder appears complete, or not at all
                    return target
                except OSError as error:  # another writer took the name first
                    if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
            time.sleep(0.001)
            target = f"{self._path}/{generate_timestamp()}"

    def _exists(self) -> bool:
        return bool(self.run_folders())

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "protocol": self._protocol}
