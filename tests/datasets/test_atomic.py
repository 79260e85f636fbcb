"""Writes are atomic: a failure mid-write leaves the previous file intact and no temp files."""

from __future__ import annotations

import pandas as pd
import pytest

from covid_imaging.datasets.atomic_csv import AtomicCSVDataset
from covid_imaging.datasets.bytes_dataset import BytesDataset


def test_csv_round_trip_keeps_empty_strings(tmp_path):
    dataset = AtomicCSVDataset(filepath=str(tmp_path / "m.csv"))
    dataset.save(pd.DataFrame({"image": ["a", "b"], "mask": ["m.png", ""]}))
    assert dataset.load()["mask"].tolist() == ["m.png", ""]


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "report.csv"
    dataset = AtomicCSVDataset(filepath=str(path))
    dataset.save(pd.DataFrame({"x": [1, 2, 3]}))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("covid_imaging.datasets.atomic.os.replace", crash)
    with pytest.raises(Exception, match="disk full"):
        dataset.save(pd.DataFrame({"x": list(range(1000))}))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv"]


def test_bytes_dataset_round_trip_and_missing_file_message(tmp_path):
    dataset = BytesDataset(filepath=str(tmp_path / "sub" / "a.bin"))
    dataset.save(b"\x00\x01")
    assert dataset.load() == b"\x00\x01"
    with pytest.raises(Exception, match="file not found"):
        BytesDataset(filepath=str(tmp_path / "nope.bin")).load()
