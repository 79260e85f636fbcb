"""The upload command against Azurite: byte-identical round trip, idempotent re-runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from covid_imaging.azure.credentials import BlobCredentials
from covid_imaging.azure.upload import UploadError, local_files, main, upload_folder


def _remote_bytes(creds: BlobCredentials, container: str, prefix: str) -> dict[str, bytes]:
    client = creds.service_client().get_container_client(container)
    return {
        blob.name[len(prefix) + 1 :]: client.download_blob(blob.name).readall()
        for blob in client.list_blobs(name_starts_with=prefix + "/")
    }


def test_round_trip_is_byte_identical_and_idempotent(
    png_folder: Path, container: str, blob_credentials: BlobCredentials
) -> None:
    files = local_files(png_folder)
    first = upload_folder(png_folder, container, "raw/v1", blob_credentials)
    assert sorted(first.uploaded) == sorted(files) and not first.skipped and not first.failed
    assert _remote_bytes(blob_credentials, container, "raw/v1") == {
        k: p.read_bytes() for k, p in files.items()
    }

    second = upload_folder(png_folder, container, "raw/v1", blob_credentials)
    assert (len(second.uploaded), len(second.skipped)) == (0, len(files))

    changed = "cxr/covid/images/img_000.png"
    (png_folder / changed).write_bytes(b"not the same content any more")
    third = upload_folder(png_folder, container, "raw/v1", blob_credentials)
    assert third.uploaded == [changed] and len(third.skipped) == len(files) - 1
    assert (
        _remote_bytes(blob_credentials, container, "raw/v1")[changed]
        == b"not the same content any more"
    )


def test_interrupted_upload_resumes(
    png_folder: Path, container: str, blob_credentials: BlobCredentials
) -> None:
    """Simulate an upload killed halfway: only the missing half is sent on the re-run."""
    files = sorted(local_files(png_folder))
    half = png_folder.parent / "half"
    for key in files[: len(files) // 2]:
        (half / key).parent.mkdir(parents=True, exist_ok=True)
        (half / key).write_bytes((png_folder / key).read_bytes())
    upload_folder(half, container, "raw", blob_credentials)
    report = upload_folder(png_folder, container, "raw", blob_credentials)
    assert sorted(report.uploaded) == files[len(files) // 2 :]
    assert len(report.skipped) == len(files) // 2


def test_cli_reports_uploaded_and_skipped(
    png_folder: Path,
    container: str,
    connection_string: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MY_AZ_CONN", connection_string)
    argv = [
        str(png_folder),
        "--container",
        container,
        "--prefix",
        "raw/v1",
        "--connection-string-env",
        "MY_AZ_CONN",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "uploaded 12 file(s)" in out and "skipped 0" in out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "uploaded 0 file(s)" in out and "skipped 12" in out


def test_missing_container_needs_flag(
    png_folder: Path,
    blob_credentials: BlobCredentials,
    connection_string: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(UploadError, match="container does not exist; pass --create-container"):
        upload_folder(png_folder, "no-such-container", "raw", blob_credentials)

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)
    argv = [
        str(png_folder),
        "--container",
        "created-by-cli",
        "--prefix",
        "raw",
        "--create-container",
    ]
    assert main(argv) == 0
    assert "created container created-by-cli" in capsys.readouterr().out
    assert main(argv[:-1]) == 0  # exists now: no flag needed


def test_cli_errors_are_one_line(png_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(png_folder), "--container", "c", "--prefix", "p"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("covid-imaging-upload: error: no Azure Storage credentials found")
        and "\n" not in err
    )
