"""Writes are atomic: a failure mid-write leaves the previous file intact and no temp files."""

from __future__ import annotations

import pandas as pd
import pytest

from covid_imaging.datasets.atomic_csv import AtomicCSVDataset
from covid_imaging.datasets.atomic_json import AtomicJSONDataset, AtomicMatplotlibDataset
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


def test_failed_json_save_keeps_the_old_metrics_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "test_metrics.json"
    dataset = AtomicJSONDataset(filepath=str(path))
    dataset.save({"dice": 0.95, "per_source": {"shenzhen": 0.96}})
    assert dataset.load() == {"dice": 0.95, "per_source": {"shenzhen": 0.96}}
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("covid_imaging.datasets.atomic.os.replace", crash)
    with pytest.raises(Exception, match="disk full"):
        dataset.save({"dice": 0.5})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["test_metrics.json"]


def test_figures_are_written_whole_and_one_file_per_named_figure(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    for name in ("roc.png", "confusion.png"):
        figure, axis = plt.subplots()
        axis.plot([0, 1], [0, 1])
        figures[name] = figure
    AtomicMatplotlibDataset(filepath=str(tmp_path / "plots")).save(figures)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["confusion.png", "roc.png"]
    assert (tmp_path / "plots" / "roc.png").read_bytes().startswith(b"\x89PNG")

    single = tmp_path / "curves.png"
    AtomicMatplotlibDataset(filepath=str(single)).save(plt.subplots()[0])
    before = single.read_bytes()
    monkeypatch.setattr("covid_imaging.datasets.atomic.os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(Exception, match="disk full"):
        AtomicMatplotlibDataset(filepath=str(single)).save(plt.subplots()[0])
    assert single.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_every_file_output_of_the_catalog_is_written_atomically():
    """Each catalog entry that writes local files uses a write-then-rename dataset."""
    from kedro.config import OmegaConfigLoader

    from covid_imaging.settings import CONFIG_LOADER_ARGS
    from tests.conftest import PROJECT_ROOT

    atomic_types = {
        "covid_imaging.datasets.atomic_csv.AtomicCSVDataset",
        "covid_imaging.datasets.atomic_json.AtomicJSONDataset",
        "covid_imaging.datasets.atomic_json.AtomicMatplotlibDataset",
        "covid_imaging.datasets.bytes_dataset.BytesDataset",
        "covid_imaging.datasets.swapped_partitions.SwappedPartitionedDataset",  # swapped in whole
        "covid_imaging.datasets.run_folder.RunFolderDataset",  # renamed into place whole
        "covid_imaging.inference.models.ModelStoreDataset",  # reads trained models only
        "tensorflow.TensorFlowModelDataset",  # versioned: each save is a new version folder
    }
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **CONFIG_LOADER_ARGS)
    not_atomic = {}
    for name, entry in loader["catalog"].items():
        if not isinstance(entry, dict) or "type" not in entry or name.startswith("_"):
            continue
        kind = entry["type"]
        if kind == "partitions.PartitionedDataset":
            kind = entry["dataset"]["type"] if isinstance(entry["dataset"], dict) else entry["dataset"]
        if kind not in atomic_types:
            not_atomic[name] = kind
    assert not not_atomic


def test_bytes_dataset_round_trip_and_missing_file_message(tmp_path):
    dataset = BytesDataset(filepath=str(tmp_path / "sub" / "a.bin"))
    dataset.save(b"\x00\x01")
    assert dataset.load() == b"\x00\x01"
    with pytest.raises(Exception, match="file not found"):
        BytesDataset(filepath=str(tmp_path / "nope.bin")).load()


def test_names_at_the_file_system_limit_are_written(tmp_path):
    """A 230-byte name (legal, NAME_MAX is 255) must not make the temporary name too long."""
    name = "x" * 100 + "é" * 63 + ".png"  # 230 bytes in UTF-8
    assert len(name.encode()) == 230
    dataset = BytesDataset(filepath=str(tmp_path / name))
    dataset.save(b"data")
    assert dataset.load() == b"data"
    longest = "y" * 251 + ".csv"  # exactly NAME_MAX
    AtomicCSVDataset(filepath=str(tmp_path / longest)).save(pd.DataFrame({"a": [1]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, longest])


KILLED_WRITER = """
import os, sys, time
from covid_imaging.datasets import atomic
import fsspec

def stall(*args, **kwargs):  # the process is killed between writing and renaming
    print("written", flush=True)
    time.sleep(60)

atomic.os.replace = stall
atomic.atomic_write_bytes(fsspec.filesystem("file"), sys.argv[1], b"new" * 1000)
"""


def test_temporaries_of_a_killed_write_are_removed_by_the_next_write(tmp_path):
    import signal
    import subprocess
    import sys

    target = tmp_path / "table.csv"
    target.write_bytes(b"old")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "written"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    orphans = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1 and ".atomic-" in orphans[0]
    assert target.read_bytes() == b"old"  # the killed write never showed

    (tmp_path / ".unrelated.tmp").write_bytes(b"not ours")  # a user's file with a similar name
    BytesDataset(filepath=str(tmp_path / "other.bin")).save(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".unrelated.tmp", "other.bin", "table.csv"]


def test_a_temporary_of_a_live_writer_is_never_removed(tmp_path):
    import os

    from covid_imaging.datasets.atomic import remove_orphaned_temporaries, temporary_name

    live = tmp_path / temporary_name("report.csv")  # this process's pid: a write in progress
    live.write_bytes(b"partial")
    assert str(os.getpid()) in live.name
    assert remove_orphaned_temporaries(str(tmp_path)) == []
    assert live.exists()


def test_labels_and_ids_that_look_like_numbers_stay_text(tmp_path):
    """Class folders 0/ and 1/ and files 01.png, 1.png: the manifest read back keeps them
    apart and textual, so splits can join task and label."""
    from covid_imaging.pipelines.splits.nodes import make_splits

    dataset = AtomicCSVDataset(filepath=str(tmp_path / "manifest.csv"))
    manifest = pd.DataFrame({"image_id": ["01", "1"] + [str(k) for k in range(2, 40)],
                             "task": "classification", "label": ["0", "1"] * 20, "source": "s",
                             "group_id": [f"{k:03d}" for k in range(40)], "width": 64})
    dataset.save(manifest)
    loaded = dataset.load()
    assert loaded["image_id"].tolist()[:2] == ["01", "1"] and loaded["label"].tolist()[:2] == ["0", "1"]
    assert loaded["width"].dtype.kind == "i"
    splits = make_splits(loaded, {"test_fraction": 0.1, "validation_fraction": 0.2})
    assert set(splits["label"]) == {"0", "1"}
