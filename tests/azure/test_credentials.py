"""Credential resolution and secret redaction (no emulator needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceNotFoundError, ServiceRequestError

from covid_imaging.azure.credentials import (
    AZURITE_KEY,
    AzureCredentialsError,
    SecretRedactingFilter,
    install_log_redaction,
    redact_secrets,
    resolve_credentials,
)
from covid_imaging.azure.errors import with_retries

KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY3ODkwYWJjZGVm+/=="
CONN = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"
SAS = "sv=2024-08-04&ss=b&srt=co&sp=rl&se=2030-01-01T00:00:00Z&sig=AbCdEf1234567890%2BXyZ%3D"


def test_connection_string_from_env() -> None:
    creds = resolve_credentials(
        use_project_credentials=False, environ={"AZURE_STORAGE_CONNECTION_STRING": CONN}
    )
    assert (creds.account_name, creds.account_url, creds.kind) == (
        "acct",
        "https://acct.blob.core.windows.net",
        "connection string",
    )
    assert creds.adlfs_kwargs() == {"connection_string": CONN}
    assert KEY not in repr(creds)


def test_explicit_mapping_wins_over_env() -> None:
    creds = resolve_credentials(
        {"account_name": "other", "sas_token": "?" + SAS},
        use_project_credentials=False,
        environ={"AZURE_STORAGE_CONNECTION_STRING": CONN},
    )
    assert creds.account_name == "other" and creds.sas_token == SAS and creds.kind == "SAS token"
    assert creds.adlfs_kwargs() == {"account_name": "other", "sas_token": SAS}


def test_account_name_and_key_env_vars() -> None:
    creds = resolve_credentials(
        use_project_credentials=False,
        environ={"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": KEY},
    )
    assert creds.adlfs_kwargs() == {"account_name": "acct", "account_key": KEY}


def test_project_credentials_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.kedro]\npackage_name = "x"\nproject_name = "x"\nkedro_init_version = "1.7.0"\n'
    )
    (tmp_path / "conf" / "base").mkdir(parents=True)
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "conf" / "local" / "credentials.yml").write_text(
        "azure_storage:\n  account_name: fileacct\n  account_key: ${oc.env:TEST_AZ_KEY}\n"
    )
    import os

    os.environ["TEST_AZ_KEY"] = KEY
    try:
        creds = resolve_credentials(
            project_path=tmp_path, environ={"AZURE_STORAGE_CONNECTION_STRING": CONN}
        )
    finally:
        del os.environ["TEST_AZ_KEY"]
    assert creds.account_name == "fileacct" and creds.account_key == KEY
    assert "conf/local/credentials" in creds.source


def test_missing_credentials_message_says_where_it_looked() -> None:
    with pytest.raises(AzureCredentialsError, match="AZURE_STORAGE_CONNECTION_STRING") as info:
        resolve_credentials(environ={})
    assert "conf/local/credentials.yml" in str(info.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"account_name": "a"}, "incomplete"),
        ({"account_key": KEY}, "incomplete"),
        ({"acount_name": "a", "account_key": KEY}, "unknown key"),
        (
            {"connection_string": "AccountName=a;EndpointSuffix=x"},
            "neither AccountKey nor SharedAccessSignature",
        ),
    ],
)
def test_malformed_credentials(values: dict[str, str], message: str) -> None:
    with pytest.raises(AzureCredentialsError, match=message) as info:
        resolve_credentials(values, use_project_credentials=False, environ={})
    assert KEY not in str(info.value)


def test_redact_secrets_patterns() -> None:
    text = (
        f"conn={CONN} url=https://acct.blob.core.windows.net/c/b.png?{SAS} "
        f"cfg={{'account_key': '{KEY}'}} Authorization: SharedKey acct:Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA=="
        " BlobEndpoint=https://x/;SharedAccessSignature=sv=1&sig=QWERTY123456"
    )
    clean = redact_secrets(text)
    for secret in (KEY, "AbCdEf1234567890", "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA", "QWERTY123456"):
        assert secret not in clean
    assert "AccountName=acct" in clean and "sp=rl" in clean  # non-secret parts stay readable


def test_registered_secret_is_redacted_even_bare() -> None:
    resolve_credentials({"connection_string": CONN}, use_project_credentials=False)
    assert redact_secrets(f"key was {KEY}!") == "key was ***!"
    assert AZURITE_KEY not in redact_secrets(f"AccountKey={AZURITE_KEY};")


def test_filter_scrubs_message_args_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    log = logging.getLogger("covid_imaging.tests.redaction")
    with caplog.at_level(logging.INFO):
        log.info("connecting with %s", CONN)
        try:
            raise RuntimeError(f"boom AccountKey={KEY}")
        except RuntimeError:
            log.exception("failed")
    assert KEY not in caplog.text
    assert "AccountKey=***" in caplog.text
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "sas %s", (SAS,), None)
    assert SecretRedactingFilter().filter(record) and "AbCdEf" not in record.getMessage()


def test_with_retries_backs_off_exponentially_then_succeeds() -> None:
    delays: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 4:
            raise ServiceRequestError("connection reset")
        return "ok"

    assert with_retries(flaky, attempts=5, backoff_s=0.1, sleep=delays.append) == "ok"
    assert len(delays) == 3
    assert all(0.1 * 2**i <= d <= 0.1 * 2**i * 1.25 for i, d in enumerate(delays))


def test_with_retries_does_not_retry_permanent_errors() -> None:
    delays: list[float] = []

    def missing() -> None:
        raise ResourceNotFoundError("nope")

    with pytest.raises(ResourceNotFoundError):
        with_retries(missing, attempts=5, sleep=delays.append)
    assert delays == []


def test_broken_credentials_file_does_not_block_the_env_var(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.kedro]\npackage_name = "x"\nproject_name = "x"\nkedro_init_version = "1.7.0"\n'
    )
    (tmp_path / "conf" / "base").mkdir(parents=True)
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "conf" / "local" / "credentials.yml").write_text(
        "other:\n  token: ${oc.env:SURELY_UNSET_VARIABLE_1234}\n"
    )
    creds = resolve_credentials(
        project_path=tmp_path, environ={"AZURE_STORAGE_CONNECTION_STRING": CONN}
    )
    assert creds.account_name == "acct"
    with pytest.raises(AzureCredentialsError, match="cannot read credentials from") as info:
        resolve_credentials(project_path=tmp_path, environ={})
    assert "\n" not in str(info.value)


def test_placeholder_values_are_reported_not_used() -> None:
    example = "DefaultEndpointsProtocol=https;AccountName=<account>;AccountKey=<key>;EndpointSuffix=core.windows.net"
    with pytest.raises(AzureCredentialsError, match="connection_string is still a <placeholder>"):
        resolve_credentials({"connection_string": example}, use_project_credentials=False)
