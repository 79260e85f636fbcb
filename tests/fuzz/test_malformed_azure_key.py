"""A malformed Azure account key is reported as malformed, never as "access denied"."""

from __future__ import annotations

import pytest

from covid_imaging.azure.credentials import (
    AzureCredentialsError,
    BlobCredentials,
    resolve_credentials,
)
from covid_imaging.azure.errors import explain

BAD_KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ"  # base64 without its padding: "Incorrect padding"


@pytest.mark.parametrize(
    "values",
    [
        {"account_name": "acct", "account_key": BAD_KEY},
        {"connection_string": f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={BAD_KEY};EndpointSuffix=core.windows.net"},
    ],
)
def test_a_key_that_is_not_base64_is_rejected_before_any_request(values):
    with pytest.raises(AzureCredentialsError, match=r"malformed account key: not valid base64 \(Incorrect padding\)") as info:
        resolve_credentials(values, use_project_credentials=False, environ={})
    assert BAD_KEY not in str(info.value) and "access denied" not in str(info.value)


def test_the_sdk_signing_error_is_explained_as_a_malformed_key():
    # Credentials built directly (as a custom caller could) reach the SDK, which fails to
    # sign locally; no server is contacted (the port is closed anyway).
    creds = BlobCredentials("acct", "http://127.0.0.1:9/acct", "test credentials", account_key=BAD_KEY)
    client = creds.service_client(retry_total=0)
    with pytest.raises(Exception) as info:
        list(client.get_container_client("c").list_blobs())
    message = explain(info.value, creds)
    assert message.startswith("malformed account key in the account key from test credentials")
    assert "access denied" not in message and BAD_KEY not in message


def test_a_well_formed_key_still_resolves():
    creds = resolve_credentials({"account_name": "acct", "account_key": BAD_KEY + "=="},
                                use_project_credentials=False, environ={})
    assert creds.kind == "account key"
