"""Ingestion's build_manifest gives the same manifest from the container as from disk,
and a blob that is not an image becomes a rejected-files row naming it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from kedro_datasets.partitions import PartitionedDataset

from covid_imaging.azure.credentials import BlobCredentials
from covid_imaging.azure.dataset import CachedBlobImageDataset
from covid_imaging.azure.upload import upload_folder

ROOT = Path(__file__).resolve().parents[2]
build_manifest = pytest.importorskip("covid_imaging.pipelines.ingestion.nodes").build_manifest


def _params() -> dict:
    params = yaml.safe_load((ROOT / "conf/base/parameters/ingestion.yml").read_text())["ingestion"]
    params["raw_location"] = "raw-root"  # the same string for both sources: URIs comparable
    return params


def _write_tree(root: Path) -> None:
    rng = np.random.default_rng(7)
    for label in ("covid", "normal"):
        for patient in range(3):
            name = f"synthetic_cxr_p{patient + (10 if label == 'normal' else 0):04d}_1.png"
            image = rng.integers(0, 256, (48, 48), dtype=np.uint8)
            mask = np.zeros((48, 48), np.uint8)
            mask[8:40, 6:22] = mask[8:40, 26:42] = 255
            for kind, pixels in (("images", image), ("masks", mask)):
                (root / "cxr" / label / kind).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "cxr" / label / kind / name), pixels)
    (root / "ct" / "covid").mkdir(parents=True)
    cv2.imwrite(
        str(root / "ct" / "covid" / "synthetic_ct_s0001_1.png"),
        rng.integers(0, 256, (48, 48), dtype=np.uint8),
    )
    (root / "cxr" / "covid" / "images" / "broken.png").write_bytes(b"this is not an image")


def test_manifest_from_container_equals_manifest_from_disk(
    tmp_path: Path, container: str, blob_credentials: BlobCredentials, connection_string: str
) -> None:
    folder = tmp_path / "raw"
    _write_tree(folder)
    upload_folder(folder, container, "raw/v1", blob_credentials)
    from_blob = CachedBlobImageDataset(
        container=container,
        prefix="raw/v1",
        credentials={"connection_string": connection_string},
        cache_dir=str(tmp_path / "cache"),
    ).load()
    from_disk = PartitionedDataset(
        path=str(folder), dataset="covid_imaging.datasets.bytes_dataset.BytesDataset"
    ).load()

    blob_manifest, blob_rejected = build_manifest(from_blob, _params())
    disk_manifest, disk_rejected = build_manifest(from_disk, _params())
    pd.testing.assert_frame_equal(blob_manifest, disk_manifest)
    pd.testing.assert_frame_equal(blob_rejected, disk_rejected)
    assert len(blob_manifest) == 7

    broken = blob_rejected[blob_rejected["image_key"] == "cxr/covid/images/broken.png"]
    assert len(broken) == 1
    assert broken.iloc[0]["file"] == "raw-root/cxr/covid/images/broken.png"
    assert "not an image" in broken.iloc[0]["reason"]
