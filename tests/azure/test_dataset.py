"""CachedBlobImageDataset against Azurite: same mapping as the local PartitionedDataset,
prefix-scoped listing, and a cache that notices changed blobs."""

from __future__ import annotations

from pathlib import Path

from kedro_datasets.partitions import PartitionedDataset

from covid_imaging.azure.credentials import BlobCredentials
from covid_imaging.azure.dataset import CachedBlobImageDataset
from covid_imaging.azure.upload import upload_folder


def _local(folder: Path) -> dict[str, bytes]:
    dataset = PartitionedDataset(
        path=str(folder), dataset="covid_imaging.datasets.bytes_dataset.BytesDataset"
    )
    return {key: load() for key, load in dataset.load().items()}


def _dataset(
    container: str, connection_string: str, cache: Path, **kwargs: object
) -> CachedBlobImageDataset:
    return CachedBlobImageDataset(
        container=container,
        prefix="raw/v1",
        credentials={"connection_string": connection_string},
        cache_dir=str(cache),
        **kwargs,  # type: ignore[arg-type]
    )


def test_same_keys_and_bytes_as_local_partitioned_dataset(
    png_folder: Path,
    container: str,
    blob_credentials: BlobCredentials,
    connection_string: str,
    tmp_path: Path,
) -> None:
    upload_folder(png_folder, container, "raw/v1", blob_credentials)
    # Decoys: a sibling prefix sharing the leading characters, and another folder.
    client = blob_credentials.service_client().get_container_client(container)
    client.upload_blob("raw/v1-old/cxr/covid/images/decoy.png", b"decoy")
    client.upload_blob("other/cxr/covid/images/decoy.png", b"decoy")
    client.upload_blob("raw/v1.png", b"decoy")

    loaded = _dataset(container, connection_string, tmp_path / "cache", max_workers=4).load()
    assert {key: load() for key, load in loaded.items()} == _local(png_folder)
    assert "cxr/covid/images/img_000.png" in loaded


def test_second_load_downloads_nothing_and_changed_blob_is_refetched(
    png_folder: Path,
    container: str,
    blob_credentials: BlobCredentials,
    connection_string: str,
    tmp_path: Path,
) -> None:
    upload_folder(png_folder, container, "raw/v1", blob_credentials)
    cache = tmp_path / "cache"
    first = _dataset(container, connection_string, cache)
    first.load()
    assert (first.last_load_stats.downloaded, first.last_load_stats.from_cache) == (12, 0)

    second = _dataset(container, connection_string, cache)  # a new run: new object, same cache
    data = second.load()
    assert (second.last_load_stats.downloaded, second.last_load_stats.from_cache) == (0, 12)
    assert len(data) == 12

    changed = "cxr/normal/images/img_001.png"
    (png_folder / changed).write_bytes(b"new bytes, same name")
    upload_folder(png_folder, container, "raw/v1", blob_credentials)
    third = _dataset(container, connection_string, cache)
    data = third.load()
    assert third.last_load_stats.downloaded == 1
    assert data[changed]() == b"new bytes, same name"


def test_deleted_blob_leaves_the_mapping_and_the_cache(
    png_folder: Path,
    container: str,
    blob_credentials: BlobCredentials,
    connection_string: str,
    tmp_path: Path,
) -> None:
    upload_folder(png_folder, container, "raw/v1", blob_credentials)
    cache = tmp_path / "cache"
    _dataset(container, connection_string, cache).load()
    gone = "ct/covid/img_002.png"
    blob_credentials.service_client().get_container_client(container).delete_blob(f"raw/v1/{gone}")
    data = _dataset(container, connection_string, cache).load()
    assert gone not in data and len(data) == 11
    files_root = cache / "devstoreaccount1" / container / "raw" / "v1" / "files"
    assert not (files_root / gone).exists() and (files_root / "ct/covid/img_001.png").exists()


def test_damaged_cache_file_is_downloaded_again(
    png_folder: Path,
    container: str,
    blob_credentials: BlobCredentials,
    connection_string: str,
    tmp_path: Path,
) -> None:
    upload_folder(png_folder, container, "raw/v1", blob_credentials)
    cache = tmp_path / "cache"
    _dataset(container, connection_string, cache).load()
    victim = next(cache.rglob("img_000.png"))
    victim.write_bytes(b"trunc")
    dataset = _dataset(container, connection_string, cache)
    data = dataset.load()
    assert dataset.last_load_stats.downloaded == 1
    key = victim.relative_to(next(cache.rglob("files"))).as_posix()
    assert data[key]() == (png_folder / key).read_bytes()


def test_filename_suffix_filters_and_strips_like_partitioned_dataset(
    png_folder: Path,
    container: str,
    blob_credentials: BlobCredentials,
    connection_string: str,
    tmp_path: Path,
) -> None:
    (png_folder / "notes.txt").write_text("not an image")
    upload_folder(png_folder, container, "raw/v1", blob_credentials)
    data = _dataset(container, connection_string, tmp_path / "cache", filename_suffix=".png").load()
    local = PartitionedDataset(
        path=str(png_folder),
        dataset="covid_imaging.datasets.bytes_dataset.BytesDataset",
        filename_suffix=".png",
    ).load()
    assert sorted(data) == sorted(local) and "cxr/covid/images/img_000" in data


def test_folder_placeholder_blobs_are_not_files(
    png_folder: Path,
    container: str,
    blob_credentials: BlobCredentials,
    connection_string: str,
    tmp_path: Path,
) -> None:
    """Hierarchical-namespace accounts list folders as empty blobs marked hdi_isfolder."""
    upload_folder(png_folder, container, "raw/v1", blob_credentials)
    client = blob_credentials.service_client().get_container_client(container)
    client.upload_blob("raw/v1/cxr", b"", metadata={"hdi_isfolder": "true"})
    data = _dataset(container, connection_string, tmp_path / "cache").load()
    assert "cxr" not in data and len(data) == 12
