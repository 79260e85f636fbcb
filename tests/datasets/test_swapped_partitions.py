"""A folder saved with ``overwrite: true`` is swapped in whole: never a part, never missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kedro.io.core import DatasetError

from covid_imaging.datasets import swapped_partitions
from covid_imaging.datasets.swapped_partitions import SwappedPartitionedDataset, recover_folder

BYTES = "covid_imaging.datasets.bytes_dataset.BytesDataset"


def _dataset(path: Path, **kwargs) -> SwappedPartitionedDataset:
    return SwappedPartitionedDataset(
        path=str(path), dataset={"type": BYTES}, filename_suffix=".png", **{"overwrite": True, **kwargs}
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(params=["exchange", "two renames"])
def swap_mode(request, monkeypatch):
    if request.param == "two renames":
        monkeypatch.setattr(swapped_partitions, "_EXCHANGE", None)
    elif swapped_partitions._EXCHANGE is None:
        pytest.skip("renameat2 not available here")
    return request.param


def test_overwrite_replaces_the_folder_and_leaves_nothing_beside_it(tmp_path, swap_mode):
    folder = tmp_path / "feature" / "preprocessed"
    dataset = _dataset(folder)
    dataset.save({"images/a": b"a1", "images/b": b"b1", "masks/a": b"ma"})
    (folder / "images" / "stale.png").write_bytes(b"from an earlier data set")
    dataset.save({"images/a": b"a2", "images/c": b"c2"})
    assert _tree(folder) == {"images/a.png": b"a2", "images/c.png": b"c2"}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["preprocessed"]
    loaded = _dataset(folder).load()
    assert {key: load() for key, load in loaded.items()} == {"images/a": b"a2", "images/c": b"c2"}


def test_lazy_saving_materialises_one_partition_at_a_time(tmp_path):
    events: list[str] = []

    def make(key: str):
        def produce() -> bytes:
            # Every earlier partition is already on disk (in the staging folder).
            events.append(key)
            return key.encode()

        return produce

    folder = tmp_path / "out"
    keys = [f"images/{i:02d}" for i in range(5)]
    _dataset(folder).save({key: make(key) for key in keys})
    assert events == keys
    assert _tree(folder) == {f"{key}.png": key.encode() for key in keys}


def test_a_failed_save_keeps_the_previous_folder(tmp_path, swap_mode):
    folder = tmp_path / "out"
    _dataset(folder).save({"images/a": b"old-a", "images/b": b"old-b"})

    def broken() -> bytes:
        raise RuntimeError("decoder crashed")

    with pytest.raises(DatasetError, match="decoder crashed"):
        _dataset(folder).save({"images/a": b"new-a", "images/b": broken})
    assert _tree(folder) == {"images/a.png": b"old-a", "images/b.png": b"old-b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_partition_that_is_not_bytes_fails_with_its_file_and_keeps_the_previous_folder(tmp_path):
    folder = tmp_path / "out"
    _dataset(folder).save({"images/a": b"old-a"})
    with pytest.raises(DatasetError, match=r"images/b\.png: BytesDataset saves bytes, got ndarray"):
        _dataset(folder).save({"images/a": b"new-a", "images/b": np.zeros(3)})
    assert _tree(folder) == {"images/a.png": b"old-a"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_first_save_creates_the_folder_and_an_empty_save_empties_it(tmp_path, swap_mode):
    folder = tmp_path / "new" / "out"
    _dataset(folder).save({"images/a": b"a"})
    assert _tree(folder) == {"images/a.png": b"a"}
    _dataset(folder).save({})
    assert folder.is_dir() and _tree(folder) == {}


KILLED_WRITER = """
import os, signal, sys
from covid_imaging.datasets import swapped_partitions
from covid_imaging.datasets.swapped_partitions import SwappedPartitionedDataset

folder, mode = sys.argv[1], sys.argv[2]
if mode != "exchange":
    swapped_partitions._EXCHANGE = None

def die() -> bytes:
    os.kill(os.getpid(), signal.SIGKILL)

data = {f"images/{i}": f"new-{i}".encode() for i in range(6)}
if mode == "while writing":
    data["images/3"] = die
elif mode == "between renames":
    real_rename = os.rename
    def rename(src, dst):
        real_rename(src, dst)
        if ".old-" in os.path.basename(dst):  # the old folder is aside, the new one not yet in
            os.kill(os.getpid(), signal.SIGKILL)
    swapped_partitions.os.rename = rename
elif mode == "exchange":
    def rmtree(*args, **kwargs):  # swapped in, old contents not deleted yet
        os.kill(os.getpid(), signal.SIGKILL)
    swapped_partitions.shutil.rmtree = rmtree
SwappedPartitionedDataset(
    path=folder, dataset={"type": "covid_imaging.datasets.bytes_dataset.BytesDataset"},
    filename_suffix=".png", overwrite=True,
).save(data)
"""

OLD = {f"images/{i}.png": f"old-{i}".encode() for i in range(4)}
NEW = {f"images/{i}.png": f"new-{i}".encode() for i in range(6)}


@pytest.mark.parametrize(
    ("mode", "after_kill"),
    [("while writing", OLD), ("between renames", None), ("exchange", NEW)],
)
def test_a_killed_save_leaves_a_complete_folder_and_is_cleaned_up(tmp_path, mode, after_kill):
    if mode == "exchange" and swapped_partitions._EXCHANGE is None:
        pytest.skip("renameat2 not available here")
    folder = tmp_path / "out"
    _dataset(folder).save({key[: -len(".png")]: value for key, value in OLD.items()})
    writer = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(folder), mode])
    assert writer.returncode == -signal.SIGKILL
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert len(leftovers) >= 1 and all(name.startswith(".out.") for name in leftovers)
    if after_kill is None:  # killed between the two renames: the folder is missing until recovered
        assert not folder.exists()
        dataset = _dataset(folder)
        assert dataset.exists()  # recovery runs before every load, existence check and save
        assert _tree(folder) == OLD
    else:
        assert _tree(folder) == after_kill
        _dataset(folder).load()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    _dataset(folder).save({"images/z": b"z"})
    assert _tree(folder) == {"images/z.png": b"z"}


def test_side_folders_of_live_writers_and_other_folders_are_never_touched(tmp_path):
    from covid_imaging.datasets.atomic import _HOST_TAG

    folder = tmp_path / "out"
    _dataset(folder).save({"images/a": b"a"})
    live = tmp_path / f".out.swap-{_HOST_TAG}-{os.getpid()}-{'0' * 12}"  # this process: a save in progress
    other = tmp_path / f".other.swap-{_HOST_TAG}-{_dead_pid()}-{'1' * 12}"  # another folder's
    dead = tmp_path / f".out.swap-{_HOST_TAG}-{_dead_pid()}-{'2' * 12}"
    unrelated = tmp_path / ".out.swap-backup"  # a user's folder with a similar name
    for path in (live, other, dead, unrelated):
        path.mkdir()
    assert recover_folder(str(folder)) == [dead.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, other.name, unrelated.name])


def test_partition_ids_cannot_escape_the_folder(tmp_path):
    with pytest.raises(DatasetError):
        _dataset(tmp_path / "out").save({"../escaped": b"x"})
    assert not (tmp_path / "escaped.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_overwrite_false_adds_partitions_like_upstream(tmp_path):
    folder = tmp_path / "out"
    _dataset(folder, overwrite=False).save({"images/a": b"a"})
    _dataset(folder, overwrite=False).save({"images/b": b"b"})
    assert _tree(folder) == {"images/a.png": b"a", "images/b.png": b"b"}


def test_non_local_protocols_fall_back_to_partitioned_dataset(monkeypatch):
    import fsspec

    memory = fsspec.filesystem("memory")
    dataset = _dataset("memory://bucket/out")  # type: ignore[arg-type]
    dataset.save({"images/a": b"a", "images/b": b"b"})
    dataset.save({"images/c": b"c"})  # overwrite: the prefix is deleted first, as upstream
    assert sorted(memory.find("/bucket")) == ["/bucket/out/images/c.png"]
    assert not [p for p in memory.ls("/bucket", detail=False) if ".swap-" in p]
    memory.rm("/bucket", recursive=True)


def test_the_image_folders_of_the_catalog_are_swapped(tmp_path):
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    from covid_imaging.settings import CONFIG_LOADER_ARGS  # the project's resolvers
    from tests.conftest import PROJECT_ROOT

    config = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **CONFIG_LOADER_ARGS)["catalog"]
    catalog = DataCatalog.from_config(config)
    for name in ("preprocessed_images", "lung_masked_images", "segmentation_cross_source.robust.preprocessed_images"):
        dataset = catalog.get(name)
        assert type(dataset) is SwappedPartitionedDataset, name
        assert dataset._overwrite and dataset._is_local, name
