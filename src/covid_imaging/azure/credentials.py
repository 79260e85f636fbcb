"""Azure Blob Storage credentials: where they come from, and keeping them out of logs.

Accepted forms (the same keys ``adlfs.AzureBlobFileSystem`` takes, so one
``azure_storage`` entry in ``credentials.yml`` also serves ``abfs://`` output datasets):

* ``connection_string``: a full storage connection string (account key or SAS inside);
* ``account_name`` + ``account_key`` (optional ``account_host``, e.g. a sovereign cloud);
* ``account_name`` + ``sas_token`` (optional ``account_host``).

Lookup order used by :func:`resolve_credentials`: an explicit mapping (Kedro passes it
when the catalog entry says ``credentials: azure_storage``), then the ``azure_storage``
key of the project's ``conf/local/credentials.yml`` (read even under ``--env=azure``,
where Kedro itself would not read ``conf/local``), then the environment variable
``AZURE_STORAGE_CONNECTION_STRING``, then ``AZURE_STORAGE_ACCOUNT_NAME`` with
``AZURE_STORAGE_ACCOUNT_KEY`` or ``AZURE_STORAGE_SAS_TOKEN``.

Secrets never travel in messages: :func:`redact_secrets` scrubs account keys, SAS
signatures and connection-string secrets from text, and :func:`install_log_redaction`
applies it to every log record of the process.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
DEFAULT_CREDENTIALS_KEY = "azure_storage"
ALLOWED_KEYS = frozenset(
    {"connection_string", "account_name", "account_key", "sas_token", "account_host"}
)

# Azurite's documented development account (public, but still treated as a secret here).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


# "<account>", "<key>": the example file's placeholders, never a real name or key.
_PLACEHOLDER = re.compile(r"<[A-Za-z_ -]+>")


class AzureCredentialsError(ValueError):
    """Credentials are missing or malformed (the message never contains a secret)."""


# --------------------------------------------------------------------------- redaction

_MASK = "***"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(AccountKey\s*=\s*)[^;'\"\s]+", re.IGNORECASE), rf"\g<1>{_MASK}"),
    (re.compile(r"(SharedAccessSignature\s*=\s*)[^;'\"\s]+", re.IGNORECASE), rf"\g<1>{_MASK}"),
    # The signature is the only secret part of a SAS token or SAS URL.
    (re.compile(r"(\bsig=)[^&;'\"\s]+", re.IGNORECASE), rf"\g<1>{_MASK}"),
    (re.compile(r"(SharedKey(?:Lite)?\s+[^:\s'\"]+:)[^'\"\s,]+", re.IGNORECASE), rf"\g<1>{_MASK}"),
    # repr()s of credential dicts and ``key=value`` dumps.
    (
        re.compile(
            r"((?:account_key|sas_token|connection_string|client_secret)['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+",
            re.IGNORECASE,
        ),
        rf"\g<1>{_MASK}",
    ),
)
_known_secrets: set[str] = set()
_known_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret so that :func:`redact_secrets` also removes it verbatim."""
    # Short strings would redact ordinary words; real keys and signatures are long.
    if value and len(value) >= 8:
        with _known_lock:
            _known_secrets.update(
                {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}
            )


def redact_secrets(text: str) -> str:
    """Return ``text`` with account keys, SAS signatures and registered secrets masked."""
    if not text:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    with _known_lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


class SecretRedactingFilter(logging.Filter):
    """Logging filter that scrubs secrets from a record's message, arguments and traceback.

    Usable from a logging config (``(): covid_imaging.azure.credentials.SecretRedactingFilter``);
    :func:`install_log_redaction` applies it to every record of the process.
    """

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging API name
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's problem, not ours
            return True
        redacted = redact_secrets(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            trace = logging.Formatter().formatException(record.exc_info)
            clean = redact_secrets(trace)
            if clean != trace:
                # Handlers such as rich re-render exc_info themselves, so drop it and keep
                # only the scrubbed text.
                record.msg = f"{record.msg}\n{clean}"
                record.args, record.exc_info, record.exc_text = None, None, None
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_secrets(record.stack_info)
        return True


_FILTER = SecretRedactingFilter()
_install_lock = threading.Lock()
_installed = False


def install_log_redaction() -> None:
    """Scrub secrets from every log record created from now on, whatever its handler.

    A record factory covers loggers and handlers configured later (Kedro configures
    logging after import), which a filter attached to today's handlers would miss.
    Idempotent.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _FILTER.filter(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


# --------------------------------------------------------------------------- credentials


def _parse_connection_string(connection_string: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    for item in connection_string.strip().strip(";").split(";"):
        if "=" in item:
            name, value = item.split("=", 1)
            parts[name.strip().lower()] = value.strip()
    return parts


@dataclass(frozen=True)
class BlobCredentials:
    """Resolved credentials for one storage account. ``repr`` shows no secret."""

    account_name: str
    account_url: str
    source: str
    connection_string: str | None = field(default=None, repr=False)
    account_key: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)
    account_host: str | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """``connection string``, ``account key`` or ``SAS token`` (for messages)."""
        if self.connection_string:
            return "connection string"
        return "account key" if self.account_key else "SAS token"

    def service_client(self, **client_kwargs: Any) -> Any:
        """A ``BlobServiceClient`` for these credentials (extra kwargs go to the SDK)."""
        from azure.storage.blob import BlobServiceClient

        if self.connection_string:
            return BlobServiceClient.from_connection_string(self.connection_string, **client_kwargs)
        credential: Any = (
            {"account_name": self.account_name, "account_key": self.account_key}
            if self.account_key
            else self.sas_token
        )
        return BlobServiceClient(self.account_url, credential=credential, **client_kwargs)

    def adlfs_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``adlfs.AzureBlobFileSystem`` / ``fsspec.filesystem("abfs")``."""
        if self.connection_string:
            return {"connection_string": self.connection_string}
        kwargs = {"account_name": self.account_name}
        kwargs.update(
            {"account_key": self.account_key}
            if self.account_key
            else {"sas_token": self.sas_token or ""}
        )
        if self.account_host:
            kwargs["account_host"] = self.account_host
        return kwargs


def credentials_from_mapping(values: Mapping[str, Any], source: str) -> BlobCredentials:
    """Validate one credentials mapping (adlfs key names) and return ``BlobCredentials``."""
    unknown = sorted(set(values) - ALLOWED_KEYS)
    if unknown:
        raise AzureCredentialsError(
            f"{source}: unknown key(s) {', '.join(unknown)}; use connection_string, or account_name "
            "with account_key or sas_token (optional account_host)"
        )
    given = {key: str(value).strip() for key, value in values.items() if value not in (None, "")}
    placeholders = sorted(key for key, value in given.items() if _PLACEHOLDER.search(value))
    if placeholders:
        raise AzureCredentialsError(
            f"{source}: {', '.join(placeholders)} is still a <placeholder> from the example; "
            "fill in the real value, or remove the entry to use AZURE_STORAGE_CONNECTION_STRING"
        )
    for secret_key in ("connection_string", "account_key", "sas_token"):
        register_secret(given.get(secret_key))
    if "connection_string" in given:
        return _from_connection_string(given["connection_string"], source)
    name, key, sas = given.get("account_name"), given.get("account_key"), given.get("sas_token")
    if not name or not (key or sas):
        raise AzureCredentialsError(
            f"{source}: incomplete Azure credentials; give connection_string, or account_name "
            "with account_key or sas_token"
        )
    if key:
        check_account_key(key, source)
    sas = sas.lstrip("?") if sas else None
    register_secret(sas)
    host = given.get("account_host")
    url = f"https://{host}" if host else f"https://{name}.blob.core.windows.net"
    return BlobCredentials(
        name, url, source, account_key=key, sas_token=None if key else sas, account_host=host
    )


def check_account_key(key: str, source: str) -> None:
    """Raise when an account key cannot be a key at all (it must be base64).

    Decoded the way the Azure SDK signs requests, so a key that fails here fails there
    too, but here it is reported as malformed instead of as "access denied".
    """
    try:
        decoded = base64.b64decode(key)
    except (binascii.Error, ValueError) as error:
        raise AzureCredentialsError(
            f"{source}: malformed account key: not valid base64 ({error}); copy the key again "
            "from the storage account's 'Access keys' page"
        ) from None
    if not decoded:
        raise AzureCredentialsError(f"{source}: malformed account key: it decodes to nothing")


def _from_connection_string(connection_string: str, source: str) -> BlobCredentials:
    parts = _parse_connection_string(connection_string)
    register_secret(parts.get("accountkey"))
    register_secret(parts.get("sharedaccesssignature"))
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        name, endpoint = AZURITE_ACCOUNT, f"http://127.0.0.1:10000/{AZURITE_ACCOUNT}"
        return BlobCredentials(name, endpoint, source, connection_string=connection_string)
    if parts.get("accountkey"):
        check_account_key(parts["accountkey"], f"{source} (AccountKey)")
    if not (parts.get("accountkey") or parts.get("sharedaccesssignature")):
        raise AzureCredentialsError(
            f"{source}: not a usable Azure Storage connection string (it has neither AccountKey "
            "nor SharedAccessSignature)"
        )
    endpoint = parts.get("blobendpoint")
    if not endpoint:
        if not parts.get("accountname"):
            raise AzureCredentialsError(
                f"{source}: connection string has neither AccountName nor BlobEndpoint"
            )
        protocol = parts.get("defaultendpointsprotocol", "https")
        suffix = parts.get("endpointsuffix", "core.windows.net")
        endpoint = f"{protocol}://{parts['accountname']}.blob.{suffix}"
    name = (
        parts.get("accountname") or (urllib.parse.urlparse(endpoint).hostname or "?").split(".")[0]
    )
    return BlobCredentials(name, endpoint.rstrip("/"), source, connection_string=connection_string)


def load_project_credentials(
    key: str = DEFAULT_CREDENTIALS_KEY, project_path: Path | None = None, env: str = "local"
) -> Mapping[str, Any] | None:
    """Return ``credentials[key]`` from the Kedro project's ``conf/base`` + ``conf/<env>``.

    Uses Kedro's own config loader, so ``${oc.env:VAR}`` works in ``credentials.yml``.
    Returns ``None`` when there is no project or no such key.
    """
    from kedro.config import OmegaConfigLoader
    from kedro.utils import find_kedro_project

    root = project_path or find_kedro_project(Path.cwd())
    if root is None or not (Path(root) / "conf").is_dir():
        return None
    loader = OmegaConfigLoader(
        conf_source=str(Path(root) / "conf"), base_env="base", default_run_env=env, env=env
    )
    try:
        entry = loader["credentials"].get(key)
    except Exception as error:  # a YAML or interpolation error: name the file, not the content
        raise AzureCredentialsError(
            f"cannot read credentials from {root}/conf/{env}: {redact_secrets(str(error)).splitlines()[0]}"
        ) from None
    return entry or None


def resolve_credentials(
    credentials: Mapping[str, Any] | None = None,
    *,
    connection_string_env: str = DEFAULT_CONNECTION_STRING_ENV,
    credentials_key: str = DEFAULT_CREDENTIALS_KEY,
    project_path: Path | None = None,
    use_project_credentials: bool = True,
    environ: Mapping[str, str] | None = None,
) -> BlobCredentials:
    """Resolve credentials in the documented order (see the module docstring).

    Raises:
        AzureCredentialsError: nothing usable was found, or what was found is malformed.
    """
    environ = os.environ if environ is None else environ
    if credentials:
        return credentials_from_mapping(credentials, "the catalog entry's credentials")
    unreadable = ""
    if use_project_credentials:
        try:
            entry = load_project_credentials(credentials_key, project_path)
        except AzureCredentialsError as error:
            # An unrelated broken entry (say an unset ${oc.env:...}) must not block the
            # environment-variable route; the final error still mentions it.
            entry, unreadable = None, f" ({error})"
        if entry:
            return credentials_from_mapping(
                entry, f"conf/local/credentials*.yml key '{credentials_key}'"
            )
    connection_string = environ.get(connection_string_env, "").strip()
    if connection_string:
        register_secret(connection_string)
        return _from_connection_string(
            connection_string, f"environment variable {connection_string_env}"
        )
    name = environ.get("AZURE_STORAGE_ACCOUNT_NAME", "").strip()
    key = environ.get("AZURE_STORAGE_ACCOUNT_KEY", "").strip()
    sas = environ.get("AZURE_STORAGE_SAS_TOKEN", "").strip()
    if name and (key or sas):
        return credentials_from_mapping(
            {"account_name": name, "account_key": key or None, "sas_token": sas or None},
            "environment variables AZURE_STORAGE_ACCOUNT_NAME/_KEY/_SAS_TOKEN",
        )
    where = (
        f"key '{credentials_key}' in conf/local/credentials.yml{unreadable}, "
        if use_project_credentials
        else ""
    )
    raise AzureCredentialsError(
        f"no Azure Storage credentials found: looked for {where}environment variable "
        f"{connection_string_env}, and AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY "
        "or AZURE_STORAGE_SAS_TOKEN"
    )
