"""RunFolderDataset: a run folder appears complete or not at all."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from covid_imaging.datasets.run_folder import RunFolderDataset


def test_saves_a_new_timestamped_folder_each_time(tmp_path):
    dataset = RunFolderDataset(str(tmp_path / "runs"))
    dataset.save({"a.csv": "x\n1\n", "batch": lambda: {"masks/sub/m.png": b"\x89PNG"}, "r.html": lambda: "<p>"})
    first = dataset.last_run_folder
    dataset.save({"a.csv": "x\n2\n"})
    assert dataset.run_folders() == sorted([os.path.basename(first), os.path.basename(dataset.last_run_folder)])
    assert (tmp_path / "runs" / os.path.basename(first) / "masks/sub/m.png").read_bytes() == b"\x89PNG"
    assert set(dataset.load()) == {"a.csv"}  # the latest run


def test_two_saves_in_one_millisecond_both_keep_their_files(tmp_path, monkeypatch):
    import covid_imaging.datasets.run_folder as run_folder

    stamps = iter(["2026-01-01T00.00.00.000Z"] * 3 + ["2026-01-01T00.00.00.001Z"])
    monkeypatch.setattr(run_folder, "generate_timestamp", lambda: next(stamps))
    dataset = RunFolderDataset(str(tmp_path / "runs"))
    dataset.save({"a.csv": "first"})
    dataset.save({"a.csv": "second"})
    assert dataset.run_folders() == ["2026-01-01T00.00.00.000Z", "2026-01-01T00.00.00.001Z"]
    assert (tmp_path / "runs" / "2026-01-01T00.00.00.000Z" / "a.csv").read_text() == "first"
    assert dataset.load()["a.csv"].read_text() == "second"


def test_a_failure_mid_save_leaves_nothing(tmp_path):
    dataset = RunFolderDataset(str(tmp_path / "runs"))

    def boom():
        raise RuntimeError("model crashed")

    from kedro.io import DatasetError

    with pytest.raises(DatasetError, match="model crashed"):
        dataset.save({"a.csv": "x", "b": boom})
    assert os.listdir(tmp_path / "runs") == []


def test_a_file_given_as_an_iterator_is_written_piece_by_piece(tmp_path):
    written = []

    def rows():  # a table larger than memory arrives in pieces
        for i in range(3):
            written.append(i)
            yield f"row {i}\n"
        yield b"end\n"

    dataset = RunFolderDataset(str(tmp_path / "runs"))
    dataset.save({"table.csv": rows, "after.txt": "x"})
    assert dataset.load()["table.csv"].read_text() == "row 0\nrow 1\nrow 2\nend\n"
    assert written == [0, 1, 2]


def test_an_iterator_failing_midway_leaves_nothing(tmp_path):
    from kedro.io import DatasetError

    def rows():
        yield "row 0\n"
        raise OSError("disk full")

    dataset = RunFolderDataset(str(tmp_path / "runs"))
    with pytest.raises(DatasetError, match="disk full"):
        dataset.save({"a.csv": "x", "table.csv": rows})
    assert os.listdir(tmp_path / "runs") == []


def test_rejects_paths_outside_the_run_folder(tmp_path):
    from kedro.io import DatasetError

    with pytest.raises(DatasetError, match="relative path"):
        RunFolderDataset(str(tmp_path / "runs")).save({"../escape.txt": "x"})


def test_a_killed_writer_leaves_no_visible_run_and_its_folder_is_cleaned(tmp_path):
    root = tmp_path / "runs"
    script = f"""
import os, sys
from covid_imaging.datasets.run_folder import RunFolderDataset
def die():
    os._exit(9)  # killed mid-save
RunFolderDataset({str(root)!r}).save({{"a.csv": "x", "b": die}})
"""
    subprocess.run([sys.executable, "-c", script], check=False, env={**os.environ})
    leftovers = os.listdir(root)
    assert len(leftovers) == 1 and leftovers[0].startswith(".")  # hidden, incomplete
    dataset = RunFolderDataset(str(root))
    assert dataset.run_folders() == []
    dataset.save({"a.csv": "y"})
    assert [name for name in os.listdir(root) if name.startswith(".")] == []
    assert len(dataset.run_folders()) == 1
