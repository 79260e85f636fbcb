"""Write-then-rename helpers, so a killed run never leaves a half-written file.

Temporary files are named ``.<start of the name>.atomic-<host>-<pid>-<random>.tmp`` in
the target's folder: short enough for any legal target name (NAME_MAX is 255 bytes),
and recognisable, so that the temporaries of a killed process can be removed later
without touching anything else.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
import uuid

import fsspec

# Bytes of the target name kept in the temporary name (for humans; the rest is unique).
_NAME_PREFIX_BYTES = 64
_HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_TEMPORARY = re.compile(r"^\..*\.atomic-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}\.tmp$", re.DOTALL)
# Names written before this scheme: ``.<full name>.<uuid4 hex>.tmp``.
_LEGACY_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$", re.DOTALL)
# Temporaries of another host, or of the legacy scheme, carry no usable pid: they are
# only removed once no write could still be going on.
_STALE_AFTER_S = 24 * 3600

_cleaned_folders: set[str] = set()
_cleaned_lock = threading.Lock()


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def temporary_name(target_name: str) -> str:
    """A hidden, unique temporary name for ``target_name`` that stays under 110 bytes."""
    raw = os.fsencode(target_name)[:_NAME_PREFIX_BYTES]
    prefix = os.fsdecode(raw)  # surrogateescape: a cut multi-byte character stays valid here
    return f".{prefix}.atomic-{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_orphan(folder: str, name: str, now: float) -> bool:
    match = _TEMPORARY.match(name)
    if match and match["host"] == _HOST_TAG:
        pid = int(match["pid"])
        return pid != os.getpid() and not _process_alive(pid)
    if match or _LEGACY_TEMPORARY.match(name):
        try:
            return now - os.lstat(os.path.join(folder, name)).st_mtime > _STALE_AFTER_S
        except OSError:
            return False
    return False


def remove_orphaned_temporaries(folder: str) -> list[str]:
    """Delete the temporaries that killed writers left in ``folder``; return their names.

    A temporary is an orphan when its writer (same host) is no longer running, or, when
    that cannot be known, when it is more than a day old. Live writes are never touched.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    now, removed = time.time(), []
    for name in names:
        if name.endswith(".tmp") and _is_orphan(folder, name, now):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass  # removed concurrently, or not ours to remove
    return removed


def _clean_once(folder: str) -> None:
    # Once per folder and process: a listing per write would slow down big folders.
    with _cleaned_lock:
        if folder in _cleaned_folders:
            return
        _cleaned_folders.add(folder)
    remove_orphaned_temporaries(folder)


def atomic_write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    Local files: write a hidden temp file in the same folder, fsync, ``os.replace``.
    Object stores (Azure Blob, S3): a single-request upload is committed only when
    complete, so a plain write is already all-or-nothing there.
    """
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if not _is_local(fs):
        fs.pipe_file(path, data)
        return
    folder = os.path.dirname(path) or "."
    _clean_once(os.path.abspath(folder))
    tmp_path = os.path.join(folder, temporary_name(os.path.basename(path)))
    try:
        with open(tmp_path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
