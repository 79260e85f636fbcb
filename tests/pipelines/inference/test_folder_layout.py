"""The `folder` layout: every image under the source, recursively, through ingestion's checks."""

from __future__ import annotations

import cv2
import numpy as np

from covid_imaging.pipelines.inference.nodes import build_inference_manifest


def _png(seed: int) -> bytes:
    return cv2.imencode(".png", np.random.default_rng(seed).integers(0, 256, (40, 30), dtype=np.uint8))[1].tobytes()


def test_every_image_recursively_and_bad_files_reported():
    files = {
        "a.png": _png(0), "ward1/day2/b.png": _png(1), "masks/a.png": _png(2), ".hidden/c.png": _png(3),
        "notes.txt": b"hello", "ward1/empty.png": b"",
    }
    raw_files = {key: (lambda data=data: data) for key, data in files.items()}
    manifest, rejected = build_inference_manifest(raw_files, {"source": "new", "source_name": "clinic"})
    assert list(manifest["image_id"]) == ["a", "ward1/day2/b"]
    assert set(manifest["task"]) == {"cxr"} and set(manifest["source"]) == {"clinic"}
    assert (manifest["mask_key"] == "").all()
    assert list(rejected["file"]) == ["new/ward1/empty.png"]
    assert rejected["severity"].tolist() == ["error"]


def test_an_empty_source_names_the_inference_settings():
    import pytest

    from covid_imaging.pipelines.ingestion.nodes import IngestionError

    with pytest.raises(IngestionError, match=r"No images found in 'nowhere'.*the folder is inference.source"):
        build_inference_manifest({}, {"source": "nowhere"})
