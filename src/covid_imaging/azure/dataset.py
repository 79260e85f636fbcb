"""A read-only Kedro dataset for raw images in Azure Blob Storage, with a local cache.

``load()`` returns what the local ``PartitionedDataset`` of ``BytesDataset`` returns:
``{relative_path: callable returning bytes}``, with the same keys (the blob name
relative to ``prefix``). Blobs are listed under ``prefix`` only, downloaded in parallel
into a local cache and re-downloaded only when their etag, size or last-modified time
changed; the callables read the cached files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from kedro.io.core import AbstractDataset, DatasetError

from covid_imaging.azure.credentials import (
    DEFAULT_CONNECTION_STRING_ENV,
    AzureCredentialsError,
    BlobCredentials,
    install_log_redaction,
    resolve_credentials,
)
from covid_imaging.azure.errors import TransientBlobError, explain, with_retries
from covid_imaging.datasets.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)
_INDEX = "index.json"


@dataclass(frozen=True)
class BlobVersion:
    """What identifies one version of a blob; any change means download again."""

    etag: str
    size: int
    last_modified: str


@dataclass
class LoadStats:
    """Counts from the last ``load()`` (the tests and the benchmark read them)."""

    listed: int = 0
    downloaded: int = 0
    from_cache: int = 0
    bytes_downloaded: int = 0


def make_client_kwargs(max_workers: int) -> dict[str, Any]:
    """SDK client options: our own retry loop replaces the SDK's (so attempts do not
    multiply), and the HTTP pool is as large as the thread pool (urllib3 would otherwise
    drop connections above 10)."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=max_workers, pool_maxsize=max_workers)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return {"retry_total": 0, "connection_timeout": 20, "read_timeout": 120, "session": session}


def quiet_sdk_logging() -> None:
    """The SDK logs every HTTP request at INFO; keep Kedro's console readable unless the
    user configured that logger explicitly."""
    for name in ("azure.core.pipeline.policies.http_logging_policy", "azure.identity"):
        sdk_logger = logging.getLogger(name)
        if sdk_logger.level == logging.NOTSET:
            sdk_logger.setLevel(logging.WARNING)


def _version(etag: Any, size: Any, last_modified: Any) -> BlobVersion:
    # Listings give the etag bare, downloads quoted: compare them unquoted.
    return BlobVersion(str(etag).strip('"'), int(size), last_modified.isoformat())


def _write_cache_file(path: Path, data: bytes) -> None:
    """Temp file then rename, so a killed run never leaves a partial cache file.

    No fsync (unlike project outputs): it cost more than half of a cold load, and a
    cache file lost in a power cut is only downloaded again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_cached(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DatasetError(
            f"{where}: cached copy {path} is unreadable ({error.strerror}); run again to re-download"
        ) from None


class CachedBlobImageDataset(AbstractDataset[None, dict[str, Callable[[], bytes]]]):
    """Raw image files under ``abfs://<container>/<prefix>/``, cached on local disk.

    Example (``conf/azure/catalog.yml``)::

        raw_images:
          type: covid_imaging.azure.dataset.CachedBlobImageDataset
          container: covid-imaging
          prefix: raw/v1

    Credentials: see :mod:`covid_imaging.azure.credentials` (``credentials: azure_storage``
    is optional; without it ``conf/local/credentials.yml`` and the environment are used).
    """

    def __init__(  # noqa: PLR0913 - these are catalog options
        self,
        container: str,
        prefix: str,
        credentials: dict[str, Any] | None = None,
        cache_dir: str = "data/.blob_cache",
        max_workers: int = 8,
        max_attempts: int = 5,
        retry_backoff_s: float = 0.5,
        filename_suffix: str = "",
        connection_string_env: str = DEFAULT_CONNECTION_STRING_ENV,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            container: Blob container name.
            prefix: Folder inside the container (required: the container is never scanned whole).
            credentials: Optional explicit credentials (adlfs key names).
            cache_dir: Local cache root; files go to ``<cache_dir>/<account>/<container>/<prefix>/``.
            max_workers: Parallel downloads.
            max_attempts: Attempts per request for transient errors (exponential backoff).
            retry_backoff_s: First backoff delay, doubled after each failed attempt.
            filename_suffix: Keep only blobs ending with it and strip it from keys, as
                ``PartitionedDataset`` does.
            connection_string_env: Environment variable holding a connection string.
            metadata: Free-form metadata, ignored by Kedro.
        """
        install_log_redaction()
        quiet_sdk_logging()
        self._container = container.strip().strip("/")
        self._prefix = prefix.strip().strip("/")
        if not self._container:
            raise DatasetError("CachedBlobImageDataset: 'container' is empty")
        if not self._prefix:
            raise DatasetError(
                f"CachedBlobImageDataset: container '{self._container}': 'prefix' is empty; name the folder "
                "that holds the images (the whole container is never listed)"
            )
        self._explicit_credentials = dict(credentials) if credentials else None
        self._cache_dir = Path(cache_dir)
        self._max_workers = max(1, int(max_workers))
        self._max_attempts = max(1, int(max_attempts))
        self._backoff_s = float(retry_backoff_s)
        self._filename_suffix = filename_suffix
        self._connection_string_env = connection_string_env
        self.metadata = metadata
        self.last_load_stats = LoadStats()

    # ------------------------------------------------------------------ Kedro API

    def _describe(self) -> dict[str, Any]:
        # Shown by Kedro logs and Kedro-Viz: never the credentials.
        return {
            "container": self._container,
            "prefix": self._prefix,
            "cache_dir": str(self._cache_dir),
            "max_workers": self._max_workers,
        }

    def save(self, data: None) -> None:
        raise DatasetError(
            f"abfs://{self._container}/{self._prefix}: CachedBlobImageDataset is read-only; upload with "
            "`python -m covid_imaging.azure.upload`"
        )

    def _exists(self) -> bool:
        creds = self._credentials()
        client = self._container_client(creds)
        try:
            return with_retries(
                lambda: any(
                    True
                    for _ in client.list_blobs(
                        name_starts_with=self._prefix + "/", results_per_page=1
                    )
                ),
                attempts=self._max_attempts,
                backoff_s=self._backoff_s,
            )
        except Exception as error:
            raise self._error(error, creds, "cannot list") from None

    def load(self) -> dict[str, Callable[[], bytes]]:
        creds = self._credentials()
        client = self._container_client(creds)
        listed = self._list(client, creds)
        cache_root = self._cache_dir / creds.account_name / self._container / self._prefix
        files_root = cache_root / "files"
        index = self._read_index(cache_root)
        stats = LoadStats(listed=len(listed))
        wanted = {
            key: version
            for key, version in listed.items()
            if index.get(key) != version or not self._cached_ok(files_root / key, version)
        }
        if wanted:
            logger.info(
                "Downloading %d of %d blobs from abfs://%s/%s/ (%d workers)",
                len(wanted),
                len(listed),
                self._container,
                self._prefix,
                self._max_workers,
            )
        pool = ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="blob-download")
        futures: dict[Future[tuple[BlobVersion, int]], str] = {}
        try:
            futures = {
                pool.submit(self._download, client, creds, key, files_root / key): key
                for key in wanted
            }
            for future in as_completed(futures):
                future.result()  # the first failure stops the load
        finally:
            # On failure, drop queued downloads but keep the finished ones in the index,
            # so an interrupted run resumes instead of starting over.
            pool.shutdown(wait=True, cancel_futures=True)
            for future, key in futures.items():
                if future.done() and not future.cancelled() and future.exception() is None:
                    version, size = future.result()
                    index[key] = version
                    stats.downloaded += 1
                    stats.bytes_downloaded += size
            for key in set(index) - set(listed):
                index.pop(key, None)
                (files_root / key).unlink(missing_ok=True)
            self._write_index(cache_root, index)
        stats.from_cache = stats.listed - stats.downloaded
        self.last_load_stats = stats
        logger.info(
            "abfs://%s/%s/: %d files (%d downloaded, %d from cache %s)",
            self._container,
            self._prefix,
            stats.listed,
            stats.downloaded,
            stats.from_cache,
            cache_root,
        )
        return {
            self._key(name): partial(_read_cached, files_root / name, self._where(name))
            for name in sorted(listed)
        }

    # ------------------------------------------------------------------ helpers

    def _where(self, blob_key: str | None = None) -> str:
        path = f"{self._prefix}/{blob_key}" if blob_key else f"{self._prefix}/"
        return (
            f"Azure blob container '{self._container}', {'blob' if blob_key else 'prefix'} '{path}'"
        )

    def _error(
        self, error: BaseException, creds: BlobCredentials, action: str, blob_key: str | None = None
    ) -> DatasetError:
        reason = explain(error, creds)
        if getattr(error, "error_code", None) == "ContainerNotFound":
            reason = f"container '{self._container}' does not exist on account '{creds.account_name}' ({creds.account_url})"
        return DatasetError(f"{self._where(blob_key)}: {action}: {reason}")

    def _credentials(self) -> BlobCredentials:
        try:
            return resolve_credentials(
                self._explicit_credentials, connection_string_env=self._connection_string_env
            )
        except AzureCredentialsError as error:
            raise DatasetError(f"{self._where()}: {error}") from None

    def _container_client(self, creds: BlobCredentials) -> Any:
        try:
            service = creds.service_client(**make_client_kwargs(self._max_workers))
        except ValueError as error:  # malformed connection string or URL
            raise DatasetError(
                f"{self._where()}: invalid {creds.source}: {explain(error, creds)}"
            ) from None
        return service.get_container_client(self._container)

    def _key(self, name: str) -> str:
        if self._filename_suffix and name.endswith(self._filename_suffix):
            return name[: -len(self._filename_suffix)]
        return name

    def _list(self, client: Any, creds: BlobCredentials) -> dict[str, BlobVersion]:
        start = self._prefix + "/"

        def list_once() -> dict[str, BlobVersion]:
            found: dict[str, BlobVersion] = {}
            for blob in client.list_blobs(name_starts_with=start, include=["metadata"]):
                name = blob.name[len(start) :]
                # Folder placeholders (hierarchical namespace, some upload tools) are not files.
                if (
                    not name
                    or name.endswith("/")
                    or (blob.metadata or {}).get("hdi_isfolder") == "true"
                ):
                    continue
                if not name.endswith(self._filename_suffix):
                    continue
                found[name] = _version(blob.etag, blob.size, blob.last_modified)
            return found

        try:
            listed = with_retries(list_once, attempts=self._max_attempts, backoff_s=self._backoff_s)
        except Exception as error:
            raise self._error(error, creds, "cannot list blobs") from None
        for name in listed:
            parts = PurePosixPath(name).parts
            if ".." in parts or name.startswith("/"):
                raise DatasetError(
                    f"{self._where(name)}: unsafe blob name (contains '..'); rename or delete it"
                )
        if not listed:
            suffix = f" ending with '{self._filename_suffix}'" if self._filename_suffix else ""
            raise DatasetError(
                f"{self._where()}: no blobs{suffix} found under abfs://{self._container}/{start} on account "
                f"'{creds.account_name}' ({creds.account_url}); check 'prefix' in conf/azure/catalog.yml or "
                f"upload with `python -m covid_imaging.azure.upload <folder> --container {self._container} --prefix {self._prefix}`"
            )
        return listed

    @staticmethod
    def _cached_ok(path: Path, version: BlobVersion) -> bool:
        try:
            return path.stat().st_size == version.size
        except OSError:
            return False

    def _download(
        self, client: Any, creds: BlobCredentials, key: str, target: Path
    ) -> tuple[BlobVersion, int]:
        blob_name = f"{self._prefix}/{key}"

        def fetch() -> tuple[bytes, BlobVersion]:
            downloader = client.download_blob(blob_name, max_concurrency=1)
            data = downloader.readall()
            props = downloader.properties
            if len(data) != props.size:
                raise TransientBlobError(f"short read: got {len(data)} of {props.size} bytes")
            expected_md5 = props.content_settings.content_md5
            if expected_md5 and hashlib.md5(data).digest() != bytes(expected_md5):  # noqa: S324 - integrity, not security
                raise TransientBlobError("content does not match its stored MD5")
            return data, _version(props.etag, props.size, props.last_modified)

        try:
            data, version = with_retries(
                fetch, attempts=self._max_attempts, backoff_s=self._backoff_s
            )
        except Exception as error:
            raise self._error(error, creds, "cannot read blob", key) from None
        try:
            _write_cache_file(target, data)
        except OSError as error:
            raise DatasetError(
                f"{self._where(key)}: cannot write cache file {target}: {error.strerror}"
            ) from None
        return version, len(data)

    @staticmethod
    def _read_index(cache_root: Path) -> dict[str, BlobVersion]:
        try:
            raw = json.loads((cache_root / _INDEX).read_text())
            return {key: BlobVersion(**value) for key, value in raw.items()}
        except (OSError, ValueError, TypeError):
            return {}  # no or damaged index: everything is simply downloaded again

    @staticmethod
    def _write_index(cache_root: Path, index: dict[str, BlobVersion]) -> None:
        payload = json.dumps({key: asdict(value) for key, value in sorted(index.items())}, indent=0)
        os.makedirs(cache_root, exist_ok=True)
        atomic_write_bytes(fsspec.filesystem("file"), str(cache_root / _INDEX), payload.encode())
