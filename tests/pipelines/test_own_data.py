"""A user's own folder in one step, from the base environment (README, "Your own images").

`kedro run --pipelines=segmentation --params=raw_images_path=<dir>,ingestion.layout=<layout>`
works for every layout with masks, names the outputs after the folder, refuses a data set
too small to train and evaluate on, and never touches another data set's outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from covid_imaging.pipelines.segmentation.nodes import TooFewImagesError, select_segmentation_images
from covid_imaging.pipelines.segmentation.pipeline import ENSEMBLE, SEGMENTATION_MODELS
from tests.conftest import chest_like_image, lung_mask, run_kedro, write_png

pytestmark = pytest.mark.slow

TINY_TRAINING = {"preprocessing.resize.size": 64}
for _model in SEGMENTATION_MODELS:
    TINY_TRAINING |= {
        f"segmentation.{_model}.data.image_size": 32,
        f"segmentation.{_model}.data.batch_size": 8,
        f"segmentation.{_model}.training.epochs": 1,
        f"segmentation.{_model}.model.base_filters": 4,
    }


def write_own_folder(root: Path, layout: str, n: int = 30) -> Path:
    """``n`` distinct image/mask pairs laid out as ``layout`` (masks keep the image's stem)."""
    rows = []
    for index in range(n):
        image, mask = chest_like_image(seed=index), lung_mask()
        label = ("normal", "covid")[index % 2]
        folder = {"paired_folders": "", "radiography_db": f"{label}/", "manifest_csv": "files/"}[layout]
        image_key, mask_key = f"{folder}images/xray_{index:03d}.png", f"{folder}masks/xray_{index:03d}.png"
        write_png(root / image_key, image)
        write_png(root / mask_key, mask)
        rows.append({"path": image_key, "label": label, "mask_path": mask_key})
    if layout == "manifest_csv":
        pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def test_readme_recipe_trains_on_own_paired_folder(kedro_project, tmp_path):
    """The documented command, through the real CLI, on a folder the project has never seen."""
    own = write_own_folder(tmp_path / "my_xrays", "paired_folders")
    params = ",".join(
        [f"raw_images_path={own}", "ingestion.layout=paired_folders", *(f"{k}={v}" for k, v in TINY_TRAINING.items())]
    )
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--pipelines=segmentation", f"--params={params}"],
        cwd=kedro_project, capture_output=True, text=True, timeout=1500,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "Traceback" not in output and "DeprecationWarning" not in output

    comparison = pd.read_csv(kedro_project / "data/08_reporting/my_xrays/segmentation_comparison.csv")
    assert set(comparison["model"]) == {*SEGMENTATION_MODELS, ENSEMBLE}
    manifest = pd.read_csv(kedro_project / "data/02_intermediate/my_xrays/manifest.csv")
    assert len(manifest) == 30 and set(manifest["task"]) == {"segmentation"} and set(manifest["source"]) == {"my_xrays"}
    assert not (kedro_project / "data/01_raw/demo").exists()  # no demo set generated for own data
    assert list((kedro_project / "data/06_models/my_xrays/segmentation/unet.keras").glob("*/*.keras"))
    assert "Run summary" in output and "segmentation.unet:" in output

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert {run.data.tags.get("dataset") for run in runs} == {"my_xrays"}
    assert {run.data.tags.get("kedro_env") for run in runs} == {"base"}


@pytest.mark.parametrize("layout", ["paired_folders", "radiography_db", "manifest_csv"])
def test_every_layout_with_masks_feeds_segmentation_from_base(kedro_project, tmp_path, layout):
    own = write_own_folder(tmp_path / f"own_{layout}", layout)
    run_kedro(kedro_project, "data_preparation", params={"raw_images_path": str(own), "ingestion.layout": layout})
    table = pd.read_csv(kedro_project / f"data/05_model_input/own_{layout}/model_input_table.csv", keep_default_na=False)
    assert len(table) == 30
    images = select_segmentation_images(table, {"tasks": None})
    assert set(images["split"]) == {"train", "validation", "test"}
    assert all((kedro_project / path).exists() for path in images["mask_path"])
    if layout == "radiography_db":
        assert set(table["label"]) == {"normal", "covid"}


def test_too_small_a_data_set_is_refused_before_training(kedro_project, tmp_path):
    own = write_own_folder(tmp_path / "five", "paired_folders", n=5)
    with pytest.raises(TooFewImagesError, match=r"segmentation_data.min_images"):
        run_kedro(kedro_project, "segmentation", params={"raw_images_path": str(own), "ingestion.layout": "paired_folders"})
    assert not (kedro_project / "data/06_models/five").exists()


def test_two_data_sets_do_not_overwrite_each_other(kedro_project, tmp_path):
    run_kedro(kedro_project, "data_preparation", params={"demo_data.generator.n_per_class": 4,
                                                         "demo_data.generator.n_ct_per_class": 2})
    demo_tables = {path: path.read_bytes() for path in (kedro_project / "data").rglob("synthetic_demo/**/*.csv")}
    demo_images = sorted((kedro_project / "data/04_feature/synthetic_demo/preprocessed").rglob("*.png"))
    assert len(demo_tables) >= 4 and demo_images

    own = write_own_folder(tmp_path / "site_b", "paired_folders", n=12)
    run_kedro(kedro_project, "data_preparation", params={"raw_images_path": str(own), "ingestion.layout": "paired_folders"})
    assert {path: path.read_bytes() for path in demo_tables} == demo_tables
    assert sorted((kedro_project / "data/04_feature/synthetic_demo/preprocessed").rglob("*.png")) == demo_images
    site_b = pd.read_csv(kedro_project / "data/05_model_input/site_b/model_input_table.csv", keep_default_na=False)
    assert len(site_b) == 12 and site_b["image_path"].str.startswith("data/04_feature/site_b/preprocessed/").all()
