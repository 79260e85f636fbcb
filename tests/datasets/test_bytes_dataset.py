"""BytesDataset: what Kedro logs for it, and the size limit read from the open file."""

from __future__ import annotations

import pytest
from kedro.io.core import AbstractDataset

from covid_imaging.datasets.bytes_dataset import BytesDataset, UnreadableFileError


@pytest.mark.parametrize(
    "filepath",
    [
        "data/01_raw/images/a b.png",
        "/tmp/it's \"quoted\".png",
        "data/é ü.png",
        "https://user:secret@host/a.png?sig=token",
        "memory://bucket/a#fragment.png",
    ],
)
def test_repr_is_kedros_text_with_credentials_redacted(filepath: str) -> None:
    dataset = BytesDataset(filepath=filepath)

    assert repr(dataset) == AbstractDataset.__repr__(dataset)
    assert "secret" not in str(dataset) and "token" not in str(dataset)


def test_size_limit_names_the_size_and_reads_a_file_at_the_limit(tmp_path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(b"x" * 100)

    assert BytesDataset(filepath=str(path), max_bytes=100).load() == b"x" * 100
    with pytest.raises(UnreadableFileError, match=r"101 bytes, over the 100-byte limit") as error:
        path.write_bytes(b"x" * 101)
        BytesDataset(filepath=str(path), max_bytes=100).load()
    assert str(path) in str(error.value)
