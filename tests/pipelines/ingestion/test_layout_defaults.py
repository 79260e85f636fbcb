"""Own data without extra keys: the task comes from the layout, a named metadata file must exist."""

from __future__ import annotations

import pytest

from covid_imaging.pipelines.ingestion.nodes import IngestionError, build_manifest
from tests.conftest import chest_like_image, lung_mask, write_png
from tests.pipelines.ingestion.test_nodes import raw_files


@pytest.mark.parametrize(
    ("layout", "folder", "task"),
    [("paired_folders", "", "segmentation"), ("radiography_db", "Normal/", "cxr"), ("class_folders", "Normal/", "classification")],
)
def test_task_is_inferred_from_the_layout(tmp_path, layout, folder, task):
    for index in range(2):
        image_folder = f"{folder}images/" if layout != "class_folders" else folder
        write_png(tmp_path / f"{image_folder}x{index}.png", chest_like_image(seed=index))
        if layout != "class_folders":
            write_png(tmp_path / f"{folder}masks/x{index}.png", lung_mask())
    manifest, rejected = build_manifest(raw_files(tmp_path), {"raw_location": str(tmp_path), "layout": layout})
    assert set(manifest["task"]) == {task} and len(manifest) == 2 and rejected.empty


def test_unknown_task_and_missing_metadata_file_are_errors(tmp_path):
    write_png(tmp_path / "images/x.png", chest_like_image())
    write_png(tmp_path / "masks/x.png", lung_mask())
    with pytest.raises(IngestionError, match="ingestion.task must be one of"):
        build_manifest(raw_files(tmp_path), {"raw_location": str(tmp_path), "layout": "paired_folders", "task": "xray"})
    with pytest.raises(IngestionError, match=r"ieee_meta.csv: not found \(ingestion.patient_metadata.file\)"):
        build_manifest(raw_files(tmp_path), {"raw_location": str(tmp_path), "layout": "paired_folders",
                                             "patient_metadata": {"file": "ieee_meta.csv"}})


def test_metadata_site_column_gives_each_image_its_site_and_the_source_where_unknown(tmp_path):
    """``patient_metadata.site_column``: the manifest's ``site`` is the metadata's (trimmed)
    where it names one, and the image's source where the row is missing or empty."""
    for index in range(4):
        write_png(tmp_path / f"images/x{index}.png", chest_like_image(seed=index))
        write_png(tmp_path / f"masks/x{index}.png", lung_mask())
    (tmp_path / "meta.csv").write_text("path,patientid,location\n"
                                       "images/x0.png,1,\" Padova, Italy \"\nimages/x1.png,1,\"Padova, Italy\"\n"
                                       "images/x2.png,2,\n")
    params = {"raw_location": str(tmp_path), "layout": "paired_folders", "source": "v7",
              "patient_metadata": {"file": "meta.csv", "site_column": "location"}}
    manifest, _ = build_manifest(raw_files(tmp_path), params)
    sites = manifest.set_index("image_key")["site"].to_dict()
    assert sites == {"images/x0.png": "Padova, Italy", "images/x1.png": "Padova, Italy",
                     "images/x2.png": "v7", "images/x3.png": "v7"}
    assert manifest.set_index("image_key")["group_id"]["images/x0.png"] == "patient:1"
    with pytest.raises(IngestionError, match=r"meta.csv: missing column\(s\) \['hospital'\]"):
        build_manifest(raw_files(tmp_path), {**params, "patient_metadata": {"file": "meta.csv", "site_column": "hospital"}})
    unconfigured, _ = build_manifest(raw_files(tmp_path), {**params, "patient_metadata": {"file": "meta.csv"}})
    assert set(unconfigured["site"]) == {"v7"}
