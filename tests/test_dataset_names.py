"""The data set name namespaces every output, so data sets never share a file or a model."""

from __future__ import annotations

import pytest

from covid_imaging.dataset_names import demo_data_enabled, name_from_path, resolve_dataset_name


def test_name_rule_runtime_name_then_raw_folder_then_environment():
    assert resolve_dataset_name("mine", "/data/x", "synthetic_demo") == "mine"
    assert resolve_dataset_name("", "/data/hospital A/", "synthetic_demo") == "hospital_A"
    assert resolve_dataset_name("", "", "shared_data") == "shared_data"
    assert name_from_path("abfs://container/raw/v1") == "v1"


@pytest.mark.parametrize("bad", ["../up", "a/b", ".hidden", ""])
def test_names_that_are_not_one_folder_are_refused(bad):
    with pytest.raises(ValueError, match="Invalid data set name"):
        resolve_dataset_name(bad, "", "")


def test_demo_set_only_when_no_raw_folder_is_given():
    assert demo_data_enabled("") and not demo_data_enabled("/data/mine")


def _catalog_and_params(project, env=None, runtime_params=None):
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project, env=env, runtime_params=runtime_params or {}) as session:
        context = session.load_context()
        return context.catalog, context.params


def test_every_output_and_model_lives_under_its_data_set(kedro_project):
    """'The last trained U-Net' that classification_models loads is the last one of that data set."""
    folders = {}
    for env, runtime, expected in [
        (None, {}, "synthetic_demo"),
        ("shared_data", {}, "shared_data"),
        (None, {"raw_images_path": "/data/site_b", "ingestion": {"layout": "paired_folders"}}, "site_b"),
        ("shared_data", {"dataset_name": "rerun_2"}, "rerun_2"),
    ]:
        catalog, params = _catalog_and_params(kedro_project, env, runtime)
        assert params["dataset_name"] == expected
        paths = {
            name: str(catalog.get(name)._describe().get("filepath") or catalog.get(name)._describe().get("path"))
            for name in ("manifest", "model_input_table", "preprocessed_images", "segmentation.unet.model",
                         "segmentation_comparison", "classification.simple_cnn_scratch.model", "lung_masked_images")
        }
        assert all(f"/{expected}/" in path for path in paths.values()), paths
        assert params["preprocessing"]["output_root"] == f"data/04_feature/{expected}/preprocessed"
        assert paths["preprocessed_images"].endswith(params["preprocessing"]["output_root"])
        assert params["demo_data"]["enabled"] is ("raw_images_path" not in runtime and env is None)
        folders[expected] = paths
    models = [paths["segmentation.unet.model"] for paths in folders.values()]
    assert len(set(models)) == len(models)
