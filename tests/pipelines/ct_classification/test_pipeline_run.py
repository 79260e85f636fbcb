"""`kedro run --pipeline=ct_classification` on a tiny demo set: selection, models,
evaluation, Grad-CAM, activation maps, comparison, MLflow runs.

All nine namespaces are built and checked; the run itself trains three of them
(basic CNN, AlexNet, MobileNet: the registered pipeline restricted to those models by
``create_pipeline(models=...)``), because the deep ImageNet backbones cost minutes each
on a CPU even at 32 px and one epoch (graph tracing; their saved .keras files with the
optimizer state are hundreds of MB).
"""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

import covid_imaging.pipeline_registry as pipeline_registry
from covid_imaging.pipelines import ct_classification
from covid_imaging.pipelines.ct_classification.pipeline import CT_CLASSIFICATION_MODELS
from tests.conftest import run_kedro, tiny_demo_params

pytestmark = pytest.mark.slow

RUN_MODELS = ("basic_cnn", "alexnet", "mobilenet")
TINY = tiny_demo_params(n_per_class=2, n_ct_per_class=20)
for _model in CT_CLASSIFICATION_MODELS:
    TINY |= {
        f"ct_classification.{_model}.data.batch_size": 8,
        f"ct_classification.{_model}.data.max_image_size": 32,
        f"ct_classification.{_model}.evaluation.n_bootstrap": 20,
        f"ct_classification.{_model}.gradcam.per_class": 1,
    }
    for phase in ("main", "head", "fine_tune"):
        TINY[f"ct_classification.{_model}.training.{phase}.epochs"] = 1


@pytest.fixture
def three_model_pipelines(monkeypatch):
    """The registered pipelines, with ct_classification restricted to RUN_MODELS."""
    registered = pipeline_registry.register_pipelines()
    full = registered["ct_classification"]
    assert {n.namespace for n in full.nodes if n.namespace and n.namespace.startswith("ct_classification.")} == {
        f"ct_classification.{m}" for m in CT_CLASSIFICATION_MODELS
    }
    data_preparation = registered["data_preparation"]
    subset = ct_classification.create_pipeline(models=RUN_MODELS)
    monkeypatch.setattr(
        pipeline_registry, "register_pipelines",
        lambda: {**registered, "ct_classification": data_preparation + subset},
    )
    from kedro.framework.project import pipelines

    monkeypatch.setattr(pipelines, "_content", {})
    monkeypatch.setattr(pipelines, "_is_data_loaded", False)


def test_ct_classification_pipeline_on_tiny_demo_set(kedro_project, three_model_pipelines):
    run_kedro(kedro_project, "ct_classification", params=TINY)
    reports = kedro_project / "data/08_reporting/synthetic_demo"

    comparison = pd.read_csv(reports / "ct_classification_comparison.csv")
    assert list(comparison["model"]) == list(RUN_MODELS)
    assert (comparison["split_protocol"] == "grouped").all()
    assert dict(zip(comparison["model"], comparison["input_size"], strict=True)) == {
        "basic_cnn": 32, "alexnet": 32, "mobilenet": 32}
    assert {"test_balanced_accuracy", "test_balanced_accuracy_ci_low", "test_roc_auc", "test_covid_f1",
            "n_test", "gradcam_maps_all_zero"} <= set(comparison.columns)

    inputs = pd.read_csv(kedro_project / "data/05_model_input/synthetic_demo/ct_classification_inputs.csv")
    assert set(inputs["modality"]) == {"ct"} and set(inputs["label"]) == {"covid", "non_covid"}
    assert (inputs.groupby("group_id")["split"].nunique() == 1).all()

    report = pd.read_csv(reports / "ct_classification/basic_cnn/metrics_report.csv")
    assert {"overall", "synthetic_demo"} <= set(report["scope"])
    assert {"ci_low", "ci_high"} <= set(report.columns)
    for model in RUN_MODELS:
        folder = reports / "ct_classification" / model
        for figure in ("confusion_matrix", "roc_curves", "gradcam_overlays"):
            assert (folder / f"{figure}.png").stat().st_size > 0
        assert json.loads((folder / "input_metrics.json").read_text())["input_size"] == 32
    assert (reports / "ct_classification/basic_cnn/activation_maps.png").stat().st_size > 0
    assert not (reports / "ct_classification/alexnet/activation_maps.png").exists()

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    names = {run.info.run_name for run in runs}
    assert {f"ct_classification.{model}" for model in RUN_MODELS} <= names
    basic = next(run for run in runs if run.info.run_name == "ct_classification.basic_cnn")
    assert {"test_accuracy", "input_size", "reference_input_size"} <= set(basic.data.metrics)
    assert basic.data.params["data.image_size"] == "32"


def test_random_slice_protocol_runs_the_same_models(kedro_project, three_model_pipelines):
    params = TINY | {"ct_classification_data.split_protocol": "random_slices"}
    for model in CT_CLASSIFICATION_MODELS:
        params[f"ct_classification.{model}.evaluation.n_bootstrap"] = 5
    run_kedro(kedro_project, "ct_classification", params=params)
    comparison = pd.read_csv(kedro_project / "data/08_reporting/synthetic_demo/ct_classification_comparison.csv")
    assert list(comparison["model"]) == list(RUN_MODELS)
    assert (comparison["split_protocol"] == "random_slices").all()


def test_rotated_folds_pipeline_tests_every_demo_slice_once(kedro_project, monkeypatch):
    """`kedro run --pipeline=ct_classification_cv`: each model's five folds trained in a
    fresh process, every slice's out-of-fold prediction, scan CIs and the comparison."""
    registered = pipeline_registry.register_pipelines()
    subset = registered["data_preparation"] + ct_classification.create_cv_pipeline(models=["basic_cnn"])
    monkeypatch.setattr(pipeline_registry, "register_pipelines", lambda: {**registered, "ct_classification_cv": subset})
    from kedro.framework.project import pipelines

    monkeypatch.setattr(pipelines, "_content", {})
    monkeypatch.setattr(pipelines, "_is_data_loaded", False)
    run_kedro(kedro_project, "ct_classification_cv", params=TINY)

    folds = pd.read_csv(kedro_project / "data/05_model_input/synthetic_demo/ct_classification_folds.csv")
    predictions = pd.read_csv(
        kedro_project / "data/07_model_output/synthetic_demo/ct_classification_cv/basic_cnn/test_predictions.csv")
    assert sorted(predictions["image_id"]) == sorted(folds["image_id"].unique())  # every slice, once
    assert set(predictions["fold"]) == {0, 1, 2, 3, 4}
    comparison = pd.read_csv(kedro_project / "data/08_reporting/synthetic_demo/ct_classification_cv_comparison.csv")
    assert list(comparison["model"]) == ["basic_cnn"]
    assert (comparison["evaluation"] == "5 rotated test folds").all()
    assert comparison["n_test"].iloc[0] == len(predictions)
    assert comparison["n_test_scans"].iloc[0] == folds["group_id"].nunique()
    assert {"test_balanced_accuracy_ci_low", "fold_test_balanced_accuracy_mean", "fold0_validation_balanced_accuracy"
            } <= set(comparison.columns)

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    cv_run = next(run for run in runs if run.info.run_name == "ct_classification_cv.basic_cnn")
    assert {"test_balanced_accuracy", "fold_test_balanced_accuracy_mean"} <= set(cv_run.data.metrics)
    assert cv_run.data.params["model.builder"] == "basic_cnn"
