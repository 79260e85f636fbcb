"""`kedro run --pipeline=classification` on a tiny demo set: masking, models, audit, MLflow."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from covid_imaging.pipelines.classification.pipeline import CLASSIFICATION_MODELS
from tests.conftest import run_kedro, tiny_demo_params, tiny_segmentation_params

pytestmark = pytest.mark.slow

TINY = tiny_demo_params(n_per_class=10) | tiny_segmentation_params(["unet"], epochs=2) | {
    "lung_masking.min_lung_area_fraction": 0.0,  # a 2-epoch U-Net may find little lung
}
for _model in CLASSIFICATION_MODELS:
    TINY |= {
        f"classification.{_model}.data.image_size": 32,
        f"classification.{_model}.data.batch_size": 8,
        f"classification.{_model}.evaluation.n_bootstrap": 20,
        f"classification.{_model}.gradcam.per_class": 1,
    }
    TINY[f"classification.{_model}.data.cross_validation"] = _model == "hrnet"  # the reference protocol
    TINY[f"classification.{_model}.evaluation.n_seeds"] = 2 if _model == "simple_cnn_scratch" else 1
    for phase in ("main", "head", "fine_tune"):
        TINY[f"classification.{_model}.training.{phase}.epochs"] = 1
        TINY[f"classification.{_model}.training.{phase}.min_steps"] = 0  # one epoch, as it says


def test_classification_pipeline_on_tiny_demo_set(kedro_project):
    run_kedro(kedro_project, "classification", params=TINY)
    reports = kedro_project / "data/08_reporting/synthetic_demo"

    masking = pd.read_csv(reports / "lung_masking_report.csv", keep_default_na=False)
    assert {"image_id", "lung_area_fraction", "excluded", "reason"} <= set(masking.columns)
    comparison = pd.read_csv(reports / "classification_comparison.csv")
    assert set(comparison["model"]) == set(CLASSIFICATION_MODELS)
    assert {"test_accuracy", "test_balanced_accuracy", "test_f1", "gradcam_lung_share_mean"} <= set(comparison.columns)
    assert {"test_balanced_accuracy_seed_mean", "test_balanced_accuracy_seed_std"} <= set(comparison.columns)
    seeds = json.loads((reports / "classification/simple_cnn_scratch/seed_metrics.json").read_text())
    assert seeds["n_seeds"] == 2 and len([k for k in seeds if k.startswith("test_balanced_accuracy_seed4")]) == 2
    audit = json.loads((reports / "shortcut_audit.json").read_text())
    assert "verdict" in audit and 0 <= audit["chance_level"] <= 1
    paired = json.loads((reports / "paired_comparison_simple_cnn_transfer.json").read_text())
    balanced = dict(zip(comparison["model"], comparison["test_balanced_accuracy"], strict=True))
    assert (paired["model"], paired["baseline"]) == ("simple_cnn_transfer", "simple_cnn_scratch")
    assert paired["difference"] == pytest.approx(balanced["simple_cnn_transfer"] - balanced["simple_cnn_scratch"])
    assert paired["ci_low"] <= paired["difference"] <= paired["ci_high"]

    report = pd.read_csv(reports / "classification/resnet50/metrics_report.csv")
    assert {"overall", "synthetic_demo"} <= set(report["scope"])
    assert {"specificity", "roc_auc", "f1", "recall"} <= set(report["metric"])
    assert {"ci_low", "ci_high"} <= set(report.columns)
    for model in CLASSIFICATION_MODELS:
        folder = reports / "classification" / model
        for figure in ("confusion_matrix", "roc_curves", "gradcam_overlays", "learning_curves"):
            assert (folder / f"{figure}.png").stat().st_size > 0

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    names = {run.info.run_name for run in runs}
    assert {f"classification.{model}" for model in CLASSIFICATION_MODELS} <= names
    resnet = next(run for run in runs if run.info.run_name == "classification.resnet50")
    assert {"test_accuracy", "gradcam_lung_share_mean", "val_balanced_accuracy"} <= set(resnet.data.metrics)
    assert resnet.data.params["model.weights"] == "None"
    hrnet = next(run for run in runs if run.info.run_name == "classification.hrnet")
    folds = mlflow.MlflowClient().get_metric_history(hrnet.info.run_id, "cv_fold_val_accuracy")
    assert [metric.step for metric in folds] == list(range(5))  # splits.n_folds = 5
