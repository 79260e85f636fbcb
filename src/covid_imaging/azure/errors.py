"""Turn Azure SDK exceptions into short, single-line, secret-free explanations, and retry
the transient ones with exponential backoff."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from covid_imaging.azure.credentials import BlobCredentials, redact_secrets

T = TypeVar("T")
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class TransientBlobError(Exception):
    """A download that came back short or corrupted; worth another attempt."""


def is_transient(error: BaseException) -> bool:
    """Network failures, throttling and server-side 5xx errors are worth retrying."""
    if isinstance(
        error, ServiceRequestError | ServiceResponseError | IncompleteReadError | TransientBlobError
    ):
        return True
    if isinstance(error, HttpResponseError):
        return error.status_code in TRANSIENT_STATUS
    return isinstance(error, ConnectionError | TimeoutError)


def with_retries(
    operation: Callable[[], T],
    *,
    attempts: int = 5,
    backoff_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``operation``; on a transient error wait ``backoff_s * 2**n`` (+ up to 25 %
    jitter, so parallel workers do not retry in lockstep) and try again, ``attempts``
    times in all. Other errors, and the last transient one, propagate unchanged."""
    for attempt in range(attempts):
        try:
            return operation()
        except Exception as error:
            if attempt >= attempts - 1 or not is_transient(error):
                raise
            sleep(backoff_s * (2**attempt) * (1 + random.random() / 4))
    raise AssertionError("unreachable")  # pragma: no cover


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "message", None) or error or type(error).__name__)
    line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return redact_secrets(line.strip().rstrip("."))


def _network_reason(error: BaseException) -> str:
    # urllib3 nests the useful part ("[Errno 111] Connection refused") deep in a long line.
    text = _first_line(error)
    found = re.search(
        r"\[Errno -?\d+\][^\"')]*|timed out|Name or service not known|certificate verify failed",
        text,
    )
    return found.group(0).strip() if found else text


def _is_signing_error(error: BaseException) -> bool:
    """The SDK's AzureSigningError (a ClientAuthenticationError raised before any request)."""
    try:
        from azure.storage.blob._shared.authentication import AzureSigningError
    except ImportError:  # a private module of the SDK: fall back to the class name
        return type(error).__name__ == "AzureSigningError"
    return isinstance(error, AzureSigningError)


def explain(error: BaseException, creds: BlobCredentials) -> str:
    """One line saying what went wrong and what to check, without any secret."""
    code = getattr(error, "error_code", None)
    code_text = f" ({code.value if hasattr(code, 'value') else code})" if code else ""
    status = getattr(error, "status_code", None)
    if _is_signing_error(error):
        # The SDK could not even sign the request: the key is not base64, nothing was sent.
        return (
            f"malformed account key in the {creds.kind} from {creds.source}: it cannot sign requests "
            f"({_first_line(error)}); copy the key again from the storage account's 'Access keys' page"
        )
    if isinstance(error, ClientAuthenticationError) or status in (401, 403):
        return (
            f"access denied{code_text}: the {creds.kind} from {creds.source} is wrong, expired, "
            "or lacks list/read permission"
        )
    if isinstance(error, ResourceNotFoundError) or status == 404:
        return f"not found{code_text}: {_first_line(error)}"
    if isinstance(error, ServiceRequestError):
        return f"cannot reach {creds.account_url}: {_network_reason(error)}"
    if isinstance(error, TransientBlobError):
        return _first_line(error)
    status_text = f"HTTP {status}{code_text}: " if status else f"{type(error).__name__}: "
    return f"{status_text}{_first_line(error)}"
