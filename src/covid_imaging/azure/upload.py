"""Upload a local image folder to Azure Blob Storage, skipping what is already there.

Usage::

    python -m covid_imaging.azure.upload data/01_raw --container covid-imaging --prefix raw/v1 \\
        [--connection-string-env VAR] [--create-container] [--max-workers 8] [--verbose]

``<folder>/a/b.png`` becomes blob ``<prefix>/a/b.png``, which is the key
``CachedBlobImageDataset`` (and the local ``PartitionedDataset``) gives it. A blob whose
size and MD5 match the local file is skipped, so re-running after an interruption
uploads only what is missing or changed. Each blob is committed whole (one Put Blob,
or staged blocks committed by a final Put Block List), so an interrupted upload never
leaves a truncated blob behind.
"""

from __future__ import annotations

import argparse
import hashlib
import mimetypes
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContentSettings

from covid_imaging.azure.credentials import (
    AzureCredentialsError,
    BlobCredentials,
    credentials_from_mapping,
    install_log_redaction,
    redact_secrets,
    resolve_credentials,
)
from covid_imaging.azure.dataset import make_client_kwargs, quiet_sdk_logging
from covid_imaging.azure.errors import explain, with_retries

# Files up to this size are read into memory, hashed and sent from the same bytes, so the
# stored MD5 always describes the stored content; larger ones are streamed in blocks.
_IN_MEMORY_LIMIT = 64 * 1024 * 1024


class UploadError(RuntimeError):
    """A problem that stops the whole upload (credentials, container, folder)."""


@dataclass
class UploadReport:
    """What one run did; blob names are relative to the prefix."""

    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    remote_only: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    container_created: bool = False


def _md5(path: Path) -> tuple[bytes, int]:
    digest = hashlib.md5()  # noqa: S324 - Azure's content hash, not a security measure
    size = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.digest(), size


def local_files(folder: Path) -> dict[str, Path]:
    """Every regular file under ``folder``, keyed by its POSIX path relative to it."""
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def upload_folder(
    folder: Path | str,
    container: str,
    prefix: str,
    credentials: BlobCredentials,
    *,
    create_container: bool = False,
    max_workers: int = 8,
    max_attempts: int = 5,
    retry_backoff_s: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> UploadReport:
    """Upload ``folder`` to ``abfs://container/prefix/``; see the module docstring.

    Raises:
        UploadError: the folder is missing or empty, the container is missing (and
            ``create_container`` is false), or the credentials are refused.
    """
    folder = Path(folder)
    prefix = prefix.strip().strip("/")
    where = f"container '{container}' on account '{credentials.account_name}'"
    if not prefix:
        raise UploadError("--prefix is empty; give the folder inside the container to upload into")
    if not folder.is_dir():
        raise UploadError(f"local folder {folder} does not exist or is not a folder")
    files = local_files(folder)
    if not files:
        raise UploadError(f"local folder {folder} has no files to upload")
    report = UploadReport()
    client = credentials.service_client(**make_client_kwargs(max_workers)).get_container_client(
        container
    )

    def fail(error: BaseException, action: str) -> UploadError:
        reason = explain(error, credentials)
        return UploadError(f"{where}: {action}: {reason}")

    def list_remote() -> dict[str, tuple[int, bytes | None]]:
        remote: dict[str, tuple[int, bytes | None]] = {}
        for blob in client.list_blobs(name_starts_with=prefix + "/"):
            md5 = blob.content_settings.content_md5
            remote[blob.name[len(prefix) + 1 :]] = (int(blob.size), bytes(md5) if md5 else None)
        return remote

    try:
        remote = with_retries(list_remote, attempts=max_attempts, backoff_s=retry_backoff_s)
    except ResourceNotFoundError as error:
        if getattr(error, "error_code", None) != "ContainerNotFound":
            raise fail(error, "cannot list blobs") from None
        if not create_container:
            raise UploadError(
                f"{where}: container does not exist; pass --create-container to create it"
            ) from None
        try:
            client.create_container()
            report.container_created = True
        except ResourceExistsError:
            pass  # created meanwhile by someone else: fine
        except Exception as create_error:
            raise fail(create_error, "cannot create container") from None
        remote = {}
    except Exception as error:
        raise fail(error, "cannot list blobs") from None
    report.remote_only = sorted(set(remote) - set(files))

    def upload_one(key: str) -> tuple[str, str, int]:
        path = files[key]
        md5, size = _md5(path)
        if remote.get(key) == (size, md5):
            return key, "skipped", 0
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        settings = ContentSettings(content_type=content_type, content_md5=bytearray(md5))

        def send() -> None:
            if size <= _IN_MEMORY_LIMIT:
                data = path.read_bytes()
                if hashlib.md5(data).digest() != md5:  # noqa: S324
                    raise UploadError(f"{path} changed while uploading; run again")
                client.upload_blob(
                    f"{prefix}/{key}",
                    data,
                    overwrite=True,
                    content_settings=settings,
                    validate_content=True,
                )
            else:
                with open(path, "rb") as handle:
                    client.upload_blob(
                        f"{prefix}/{key}",
                        handle,
                        length=size,
                        overwrite=True,
                        content_settings=settings,
                    )

        try:
            with_retries(send, attempts=max_attempts, backoff_s=retry_backoff_s)
        except UploadError as error:
            return key, f"failed: {error}", 0
        except Exception as error:
            return key, "failed: " + explain(error, credentials), 0
        return key, "uploaded", size

    with ThreadPoolExecutor(
        max_workers=max(1, max_workers), thread_name_prefix="blob-upload"
    ) as pool:
        for key, outcome, size in pool.map(upload_one, sorted(files)):
            if outcome == "uploaded":
                report.uploaded.append(key)
                report.bytes_uploaded += size
            elif outcome == "skipped":
                report.skipped.append(key)
            else:
                report.failed[key] = outcome.removeprefix("failed: ")
            if progress:
                progress(f"{outcome.split(':')[0]:8s} {prefix}/{key}")
    return report


def _credentials_for_cli(connection_string_env: str | None) -> BlobCredentials:
    if connection_string_env:
        value = os.environ.get(connection_string_env, "").strip()
        if not value:
            raise AzureCredentialsError(
                f"environment variable {connection_string_env} is not set or empty"
            )
        return credentials_from_mapping(
            {"connection_string": value}, f"environment variable {connection_string_env}"
        )
    return resolve_credentials()


def _summarise(names: list[str], limit: int, verbose: bool) -> str:
    shown = names if verbose else names[:limit]
    more = (
        ""
        if len(shown) == len(names)
        else f"\n    ... and {len(names) - len(shown)} more (--verbose lists all)"
    )
    return "".join(f"\n    {name}" for name in shown) + more


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code (0 ok, 1 some files failed,
    2 nothing could be done)."""
    install_log_redaction()
    quiet_sdk_logging()
    parser = argparse.ArgumentParser(
        prog="covid-imaging-upload",
        description="Upload a local image folder to Azure Blob Storage under <container>/<prefix>/, "
        "skipping blobs that already hold the same content (size + MD5).",
    )
    parser.add_argument(
        "folder", type=Path, help="local folder to upload (its subfolders become blob paths)"
    )
    parser.add_argument("--container", required=True, help="blob container name")
    parser.add_argument("--prefix", required=True, help="folder inside the container, e.g. raw/v1")
    parser.add_argument(
        "--connection-string-env",
        metavar="VAR",
        help="read the connection string from this environment variable (default: key azure_storage "
        "of conf/local/credentials.yml, then AZURE_STORAGE_CONNECTION_STRING)",
    )
    parser.add_argument(
        "--create-container", action="store_true", help="create the container if it is missing"
    )
    parser.add_argument("--max-workers", type=int, default=8, help="parallel uploads (default 8)")
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="print every file as it is handled"
    )
    args = parser.parse_args(argv)

    try:
        credentials = _credentials_for_cli(args.connection_string_env)
        report = upload_folder(
            args.folder,
            args.container,
            args.prefix,
            credentials,
            create_container=args.create_container,
            max_workers=args.max_workers,
            progress=print if args.verbose else None,
        )
    except (AzureCredentialsError, UploadError, ValueError) as error:
        print(f"covid-imaging-upload: error: {redact_secrets(str(error))}", file=sys.stderr)
        return 2

    target = f"abfs://{args.container}/{args.prefix.strip('/')}/"
    if report.container_created:
        print(f"created container {args.container}")
    print(
        f"{target}: uploaded {len(report.uploaded)} file(s) ({report.bytes_uploaded / 1e6:.1f} MB), "
        f"skipped {len(report.skipped)} already there with the same content, failed {len(report.failed)}"
    )
    if report.uploaded:
        print("uploaded:" + _summarise(report.uploaded, 20, args.verbose))
    if report.skipped and args.verbose:
        print("skipped (same size and MD5):" + _summarise(report.skipped, 20, True))
    if report.remote_only:
        print(f"left alone: {len(report.remote_only)} blob(s) under {target} with no local file")
    for key, reason in report.failed.items():
        print(f"failed: {key}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
