"""A ``PartitionedDataset`` whose ``overwrite: true`` replaces the folder by a swap.

kedro-datasets' ``PartitionedDataset`` with ``overwrite: true`` deletes the folder and
then writes the partitions one by one: a run killed in between leaves a half-empty
folder, and the tables written by the previous run (``model_input_table.csv``) point at
files that no longer exist. :class:`SwappedPartitionedDataset` instead

1. writes every partition into a hidden sibling folder
   ``.<name>.swap-<host>-<pid>-<random>`` (lazy saving is kept: callables are called one
   at a time, so memory stays bounded by one partition);
2. only when all of them are written, swaps it with the folder: one atomic
   ``renameat2(RENAME_EXCHANGE)`` on Linux; where the kernel or file system lacks it,
   two renames (folder aside to ``.<name>.old-...``, new folder in), with a window of a
   few microseconds in which the folder is missing;
3. deletes the old contents.

Before saving, and before loading or checking existence, the hidden folders left by
killed writers (same host, process gone; or older than a day) are removed; when a kill
fell between the two renames of step 2 (the folder is missing and an ``.old-`` folder
exists), the old folder is renamed back first. So after a kill at any moment the folder
holds either the previous complete set of partitions or the new complete set, never a
mix or a part.

Only local paths are swapped. For other protocols (``abfs://``, ``s3://``...) object
stores have no atomic folder rename, so saving falls back to the behaviour of
``PartitionedDataset`` (with ``overwrite: true`` the prefix is deleted first, then the
partitions are written); each partition is still all-or-nothing when its dataset writes
in one request, as ``BytesDataset`` does. With ``overwrite: false`` the folder is not
replaced either (partitions are added or replaced one by one, as upstream).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from typing import Any

from kedro_datasets.partitions import PartitionedDataset

from covid_imaging.datasets.atomic import _HOST_TAG, _STALE_AFTER_S, _process_alive
from covid_imaging.datasets.bytes_dataset import BytesDataset, require_bytes

logger = logging.getLogger(__name__)

_NAME_PREFIX_BYTES = 64
_SIDE_FOLDER = re.compile(
    r"^\.(?P<name>.*)\.(?P<kind>swap|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}$", re.DOTALL
)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _side_name(target_name: str, kind: str) -> str:
    prefix = os.fsdecode(os.fsencode(target_name)[:_NAME_PREFIX_BYTES])
    return f".{prefix}.{kind}-{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _renameat2_exchange() -> Callable[[str, str], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2  # glibc 2.28+; Linux 3.15+
    except (OSError, AttributeError, TypeError):  # other C libraries, Windows
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int

    def exchange(first: str, second: str) -> int:
        if function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
            return 0
        return ctypes.get_errno()

    return exchange


_EXCHANGE = _renameat2_exchange()


def exchange_paths(first: str, second: str) -> bool:
    """Atomically swap two existing paths; False when this system cannot (use renames)."""
    if _EXCHANGE is None:
        return False
    error = _EXCHANGE(first, second)
    if error == 0:
        return True
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):  # kernel or file system lacks it
        return False
    raise OSError(error, os.strerror(error), first, None, second)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_orphan(parent: str, name: str, match: re.Match, now: float) -> bool:
    if match["host"] == _HOST_TAG:
        pid = int(match["pid"])
        return pid != os.getpid() and not _process_alive(pid)
    try:  # another host: no usable pid; only once no write could still be going on
        return now - os.lstat(os.path.join(parent, name)).st_mtime > _STALE_AFTER_S
    except OSError:
        return False


def recover_folder(target: str) -> list[str]:
    """Undo what killed writers left beside ``target``; return the names removed or restored.

    If ``target`` is missing and a killed writer's ``.old-`` folder exists (killed
    between the two renames of a swap), that folder is the last complete state and is
    renamed back. Every other orphaned side folder is deleted. Side folders of live
    writers (this process or another running one on this host) are never touched.
    """
    target = os.path.realpath(target)  # a folder reached through a link is swapped where it lies
    parent, name = os.path.split(target)
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    prefix = os.fsdecode(os.fsencode(name)[:_NAME_PREFIX_BYTES])
    now, orphans = time.time(), []
    for entry in entries:
        match = _SIDE_FOLDER.match(entry)
        if match and match["name"] == prefix and _is_orphan(parent, entry, match, now):
            orphans.append((entry, match["kind"]))
    touched = []
    if not os.path.lexists(target):
        old = sorted((e for e, kind in orphans if kind == "old"), key=lambda e: os.lstat(os.path.join(parent, e)).st_mtime)
        if old:
            os.rename(os.path.join(parent, old[-1]), target)
            _fsync_dir(parent)
            logger.warning("Restored %s from %s, left by a run killed while swapping it in", target, old[-1])
            touched.append(old[-1])
            orphans = [(e, kind) for e, kind in orphans if e != old[-1]]
    for entry, _ in orphans:
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        touched.append(entry)
    if orphans:
        logger.info("Removed %d folder(s) left beside %s by killed runs", len(orphans), target)
    return touched


def _write_durably(path: str, data: Any) -> None:
    """Write bytes into an existing staging folder and fsync them (durable before the swap)."""
    data = require_bytes(path, data)
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class SwappedPartitionedDataset(PartitionedDataset):
    """``partitions.PartitionedDataset`` that replaces a local folder by writing aside and swapping.

    Same arguments as ``PartitionedDataset``, plus ``save_workers``: partitions are
    written (each fsynced) by that many threads, in sorted order, at most
    ``2 x save_workers`` at a time; one fsync per file costs milliseconds, so one
    writing thread would cap every backend of :mod:`covid_imaging.compute`. Inside the
    staging folder ``BytesDataset`` partitions are written directly (no temp file and
    rename each: the folder swap is what makes the save atomic).
    With ``overwrite: true`` and a local path,
    saving writes all partitions to a hidden sibling folder and swaps it in only when
    every partition is written, so a run killed at any moment leaves the previous
    complete folder (see the module docstring). Non-local protocols (``abfs://``,
    ``s3://``, ...) and ``overwrite: false`` keep ``PartitionedDataset``'s behaviour:
    with ``overwrite: true`` on an object store the prefix is deleted before the new
    partitions are written, so there a killed run can leave a partial folder.
    """

    def __init__(self, *, save_workers: int = 8, **kwargs: Any) -> None:
        if isinstance(save_workers, bool) or not isinstance(save_workers, int) or save_workers < 1:
            raise ValueError(f"save_workers must be a positive integer; got {save_workers!r}")
        super().__init__(**kwargs)
        self._save_workers = save_workers

    @property
    def _is_local(self) -> bool:
        return self._protocol in ("file", "local", None, "")

    @property
    def _local_root(self) -> str:
        return self._filesystem._strip_protocol(self._normalized_path).rstrip(self._sep)

    def _recover(self) -> None:
        if self._is_local:
            recover_folder(self._local_root)

    def load(self) -> dict[str, Callable[[], Any]]:
        self._recover()
        return super().load()

    def _exists(self) -> bool:
        self._recover()
        return super()._exists()

    def save(self, data: dict[str, Any]) -> None:
        if not (self._overwrite and self._is_local):
            super().save(data)
            return
        root = os.path.realpath(self._local_root)
        parent, name = os.path.split(root)
        os.makedirs(parent, exist_ok=True)
        recover_folder(root)
        staging = os.path.join(parent, _side_name(name, "swap"))
        os.mkdir(staging)
        try:
            self._write_partitions(data, staging)
            self._swap_in(staging, root)
        finally:
            if os.path.lexists(staging):
                shutil.rmtree(staging, ignore_errors=True)
            self._invalidate_caches()

    def _write_partitions(self, data: dict[str, Any], staging: str) -> None:
        real_root = self._local_root
        folders = {staging}

        plain_bytes = isinstance(self._dataset_type, type) and issubclass(self._dataset_type, BytesDataset)

        def write(partition_id: str, partition_data: Any) -> None:
            real_path = self._partition_to_path(partition_id)  # validates the id stays inside the folder
            path = staging + real_path[len(real_root):]
            if callable(partition_data) and self._save_lazily:
                partition_data = partition_data()  # computed when written: memory bounded by the window
            if plain_bytes:
                # The hidden staging folder is the atomic unit: no temp name and rename per
                # file (on ext4, fsync + rename costs ~1.5 ms of CPU per file, 5x a plain fsync).
                folder = os.path.dirname(path)
                if folder not in folders:  # one mkdir per folder, not a failing mkdir per file
                    os.makedirs(folder, exist_ok=True)
                _write_durably(path, partition_data)
            else:
                kwargs = deepcopy(self._dataset_config)
                kwargs[self._filepath_arg] = path
                self._dataset_type(**kwargs).save(partition_data)  # type: ignore[operator]
            folders.add(os.path.dirname(path))

        with ThreadPoolExecutor(max_workers=self._save_workers, thread_name_prefix="save") as pool:
            pending: deque[Future] = deque()
            try:
                for partition_id, partition_data in sorted(data.items()):
                    pending.append(pool.submit(write, partition_id, partition_data))
                    if len(pending) >= 2 * self._save_workers:
                        pending.popleft().result()
                while pending:
                    pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()
        for folder in sorted(folders, key=len, reverse=True):  # entries durable before the swap
            _fsync_dir(folder)

    def _swap_in(self, staging: str, root: str) -> None:
        parent = os.path.dirname(root)
        if not os.path.lexists(root):
            os.rename(staging, root)
        elif exchange_paths(staging, root):
            pass  # ``staging`` now holds the old contents; removed by ``save``
        else:
            aside = os.path.join(parent, _side_name(os.path.basename(root), "old"))
            os.rename(root, aside)
            os.rename(staging, root)
            _fsync_dir(parent)
            shutil.rmtree(aside, ignore_errors=True)
        _fsync_dir(parent)
