"""Write-then-rename helpers, so a killed run never leaves a half-written file."""

from __future__ import annotations

import os
import uuid

import fsspec


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


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
    tmp_path = f"{parent}/.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp" if parent else f".{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp_path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
