"""`kedro run --pipeline=segmentation` on a tiny demo set: models, reports and MLflow runs."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from covid_imaging.pipelines.segmentation.pipeline import ENSEMBLE, SEGMENTATION_MODELS
from tests.conftest import run_kedro, tiny_demo_params, tiny_segmentation_params

pytestmark = pytest.mark.slow

TINY = tiny_demo_params() | tiny_segmentation_params(SEGMENTATION_MODELS, epochs=2)


def test_segmentation_pipeline_on_tiny_demo_set(kedro_project):
    run_kedro(kedro_project, "segmentation", params=TINY)
    reports = kedro_project / "data/08_reporting/synthetic_demo"

    comparison = pd.read_csv(reports / "segmentation_comparison.csv")
    assert set(comparison["model"]) == {*SEGMENTATION_MODELS, ENSEMBLE}
    assert set(comparison["stage"]) == {"native size, post-processed", "post-processed", "threshold 0.5"}
    assert comparison[["mDice", "mIoU"]].apply(lambda c: c.between(0, 1)).all().all()

    for model in (*SEGMENTATION_MODELS, ENSEMBLE):
        folder = reports / "segmentation" / model
        per_image = pd.read_csv(folder / "per_image_metrics.csv")
        assert {"dice_raw", "dice_post", "iou_post", "mse", "source", "mask_convention"} <= set(per_image.columns)
        assert per_image[["dice_native_post", "dice_native_raw", "iou_native_post"]].apply(lambda c: c.between(0, 1)).all().all()
        summary = pd.read_csv(folder / "metrics_summary.csv")
        assert summary["group"].iloc[0] == "all"
        assert {"source", "mask_convention"} <= set(summary["grouping"])
        stress = pd.read_csv(folder / "stress_test.csv")
        assert set(stress["condition"]) == {"clean", "consolidation", "ground_glass", "effusion"}
        assert (stress.groupby("condition")["image_id"].apply(set).apply(len) == len(per_image)).all()
        if model != ENSEMBLE:
            assert (folder / "training_curves.png").stat().st_size > 0
        assert (folder / "sample_predictions.png").stat().st_size > 0
        assert (folder / "worst_predictions.png").stat().st_size > 0
        assert json.loads((folder / "test_metrics.json").read_text())["test_dice_post"] >= 0
        assert list((kedro_project / "data/06_models/synthetic_demo/segmentation" / f"{model}.keras").glob("*/*.keras"))

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = [run for run in runs if run.info.run_name == "segmentation"]
    assert len(parent) == 1
    children = {run.info.run_name: run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    assert set(children) == {f"segmentation.{model}" for model in (*SEGMENTATION_MODELS, ENSEMBLE)}
    for name, run in children.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["device"] == "CPU" and run.data.tags["dataset"] == "synthetic_demo"
        assert run.data.tags["git_commit"]
        assert {"test_dice_post", "test_dice_raw", "test_iou_post", "test_mse", "test_dice_native_post"} <= set(run.data.metrics)
        assert {"stress_dice_post_clean", "stress_dice_post_effusion"} <= set(run.data.metrics)
        if name == f"segmentation.{ENSEMBLE}":
            continue  # trained nothing itself: no curves, parameters or history
        assert run.data.params["training.epochs"] == "2"
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [metric.step for metric in history] == [1, 2], name  # one point per epoch, from 1
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"model", "plots", "tables"} <= artifacts
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.keras"]
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/training_curves.png", "plots/sample_predictions.png", "plots/worst_predictions.png"} <= plots
