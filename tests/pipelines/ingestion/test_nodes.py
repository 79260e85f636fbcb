"""Ingestion on real tiny files: every layout and every bad-input case."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from kedro_datasets.partitions import PartitionedDataset

from covid_imaging.pipelines.ingestion.nodes import IngestionError, build_manifest
from tests.conftest import chest_like_image, lung_mask, write_png


def raw_files(root: Path) -> dict:
    """Load the folder the way the catalog does (PartitionedDataset of BytesDataset)."""
    return PartitionedDataset(path=str(root), dataset="covid_imaging.datasets.bytes_dataset.BytesDataset").load()


def params(root: Path, **overrides) -> dict:
    return {"raw_location": str(root), "layout": "radiography_db", "task": "segmentation", "source": "test", **overrides}


@pytest.fixture
def radiography_db(tmp_path: Path) -> Path:
    """COVID-19 Radiography Database layout: 299x299 images, 256x256 masks."""
    for label, seed in (("COVID", 1), ("Normal", 2)):
        for i in range(2):
            name = f"{label}-{i + 1}"
            write_png(tmp_path / label / "images" / f"{name}.png", chest_like_image((299, 299), seed * 10 + i))
            write_png(tmp_path / label / "masks" / f"{name}.png", lung_mask((256, 256)))
    return tmp_path


def test_radiography_db_layout_with_smaller_masks(radiography_db):
    manifest, rejected = build_manifest(raw_files(radiography_db), params(radiography_db))
    assert rejected.empty
    assert len(manifest) == 4
    assert set(manifest["label"]) == {"covid", "normal"}
    row = manifest.set_index("image_key").loc["COVID/images/COVID-1.png"]
    assert row["mask_key"] == "COVID/masks/COVID-1.png"
    assert (row["width"], row["height"], row["mask_width"], row["mask_height"]) == (299, 299, 256, 256)
    assert (row["channels"], row["bit_depth"], row["file_format"]) == (1, 8, "png")
    assert len(row["content_hash"]) == 64
    assert row["image_uri"] == f"{radiography_db}/COVID/images/COVID-1.png"


def test_class_folder_layout(tmp_path):
    write_png(tmp_path / "covid" / "a.png", chest_like_image(seed=1))
    (tmp_path / "normal").mkdir()
    assert cv2.imwrite(str(tmp_path / "normal" / "b.jpg"), chest_like_image(seed=2))
    manifest, rejected = build_manifest(raw_files(tmp_path), params(tmp_path, layout="class_folders", task="classification"))
    assert rejected.empty
    assert dict(zip(manifest["image_key"], manifest["label"], strict=True)) == {"covid/a.png": "covid", "normal/b.jpg": "normal"}
    assert set(manifest["file_format"]) == {"png", "jpeg"}


def test_paired_folder_layout_matches_by_stem(tmp_path):
    for stem in ("CHNCXR_0001_0", "CHNCXR_0002_1"):
        write_png(tmp_path / "images" / f"{stem}.png", chest_like_image(seed=len(stem) + int(stem[-1])))
        write_png(tmp_path / "masks" / f"{stem}.png", lung_mask())
    manifest, rejected = build_manifest(raw_files(tmp_path), params(tmp_path, layout="paired_folders", label="cxr"))
    assert rejected.empty
    assert list(manifest["mask_key"]) == ["masks/CHNCXR_0001_0.png", "masks/CHNCXR_0002_1.png"]
    assert list(manifest["group_id"]) == ["test:0001", "test:0002"]


def test_manifest_csv_layout(tmp_path):
    write_png(tmp_path / "seg" / "images" / "x.png", chest_like_image(seed=3))
    write_png(tmp_path / "seg" / "masks" / "x.png", lung_mask())
    write_png(tmp_path / "cls" / "kermany__person12_virus_3.png", chest_like_image(seed=4))
    pd.DataFrame(
        {
            "path": ["seg/images/x.png", "cls/kermany__person12_virus_3.png", "cls/missing.png"],
            "task": ["segmentation", "classification", "classification"],
            "label": ["normal", "viral", "viral"],
            "source": ["shenzhen", "kermany", "kermany"],
            "mask_path": ["seg/masks/x.png", "", ""],
        }
    ).to_csv(tmp_path / "manifest.csv", index=False)
    manifest, rejected = build_manifest(raw_files(tmp_path), params(tmp_path, layout="manifest_csv", manifest_file="manifest.csv"))
    assert list(manifest["task"]) == ["classification", "segmentation"]
    assert manifest.set_index("label").loc["viral", "group_id"] == "kermany:person12"
    assert rejected["file"].tolist() == [f"{tmp_path}/cls/missing.png"]
    assert "not found" in rejected["reason"].iloc[0]


@pytest.fixture
def folder_with_bad_files(radiography_db: Path) -> Path:
    images, masks = radiography_db / "COVID" / "images", radiography_db / "COVID" / "masks"
    good = (images / "COVID-1.png").read_bytes()
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    (images / "empty.png").write_bytes(b"")
    (images / "notes.png").write_bytes(b"this is not an image")
    (images / "duplicate.png").write_bytes(good)
    for name in ("corrupt", "truncated", "empty", "notes", "duplicate"):
        write_png(masks / f"{name}.png", lung_mask((256, 256)))
    write_png(images / "nomask.png", chest_like_image((299, 299), 77))
    write_png(images / "wrongaspect.png", chest_like_image((299, 299), 78))
    write_png(masks / "wrongaspect.png", lung_mask((256, 128)))
    write_png(images / "graymask.png", chest_like_image((299, 299), 79))
    write_png(masks / "graymask.png", cv2.GaussianBlur(lung_mask((299, 299)), (9, 9), 3))
    write_png(images / "brokenmask.png", chest_like_image((299, 299), 80))
    (masks / "brokenmask.png").write_bytes(b"")
    return radiography_db


EXPECTED_REASONS = {
    "COVID/images/corrupt.png": "corrupt or truncated PNG",
    "COVID/images/truncated.png": "truncated",
    "COVID/images/empty.png": "empty file",
    "COVID/images/notes.png": "not an image",
    "COVID/images/duplicate.png": "exact duplicate (same SHA-256) of COVID/images/COVID-1.png",
    "COVID/images/nomask.png": "missing mask",
    "COVID/masks/wrongaspect.png": "aspect ratio differs",
    "COVID/masks/graymask.png": "non-binary mask",
    "COVID/masks/brokenmask.png": "mask: empty file",
}


def test_every_bad_file_is_reported_with_its_reason_and_the_run_goes_on(folder_with_bad_files):
    root = folder_with_bad_files
    manifest, rejected = build_manifest(raw_files(root), params(root))
    assert len(manifest) == 4  # the good images survive
    reasons = dict(zip(rejected["file"], rejected["reason"], strict=True))
    assert set(reasons) == {f"{root}/{key}" for key in EXPECTED_REASONS}
    for key, expected in EXPECTED_REASONS.items():
        assert expected in reasons[f"{root}/{key}"], (key, reasons[f"{root}/{key}"])


def test_strict_mode_fails_on_the_first_bad_file_naming_it(folder_with_bad_files):
    root = folder_with_bad_files
    with pytest.raises(IngestionError, match=r"COVID/masks/brokenmask.png: mask: empty file"):
        build_manifest(raw_files(root), params(root, strict=True))


def test_empty_source_fails_saying_where_it_looked(tmp_path):
    (tmp_path / "README.txt").write_text("nothing here")
    with pytest.raises(IngestionError, match=f"No images found in '{tmp_path}'"):
        build_manifest(raw_files(tmp_path), params(tmp_path))


def test_masks_with_values_0_and_1_are_binary(tmp_path):
    write_png(tmp_path / "images" / "a.png", chest_like_image(seed=5))
    write_png(tmp_path / "masks" / "a.png", (lung_mask() > 0).astype(np.uint8))
    _, rejected = build_manifest(raw_files(tmp_path), params(tmp_path, layout="paired_folders"))
    assert rejected.empty


def test_an_image_with_a_warning_is_still_checked_for_duplicates(tmp_path):
    """Two identical very wide films under two names: the second is an exact duplicate,
    even though both also carry the aspect-ratio warning (else one film is two patients)."""
    wide = chest_like_image((60, 400), seed=3)
    write_png(tmp_path / "covid" / "a.png", wide)
    write_png(tmp_path / "covid" / "b.png", wide)
    manifest, rejected = build_manifest(raw_files(tmp_path), params(tmp_path, layout="class_folders", task="classification"))
    assert manifest["image_key"].tolist() == ["covid/a.png"]
    errors = rejected[rejected["severity"] == "error"]
    assert errors["reason"].tolist() == ["exact duplicate (same SHA-256) of covid/a.png"]
