"""Selecting a model by MLflow URI (runs:/ and models:/) instead of the catalog."""

from __future__ import annotations

import mlflow
import numpy as np

from covid_imaging.inference.models import ModelStore
from covid_imaging.registry import load_registry
from tests.inference.helpers import threshold_model


def test_runs_and_models_uris(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("inference-test")
    saved = tmp_path / "model.keras"
    threshold_model(bright_is_lung=False).save(saved)
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(saved), artifact_path="model")  # as the project's MLflow hook logs models
    client = mlflow.MlflowClient()
    client.create_registered_model("lung-unet")
    client.create_model_version("lung-unet", f"runs:/{run.info.run_id}/model", run.info.run_id)

    spec = load_registry().get("segmentation", "unet")
    store = ModelStore(str(tmp_path / "none" / "{namespace_root}" / "{name}.keras"))
    bright = np.ones((1, 32, 32, 1), np.float32)
    for uri in (f"runs:/{run.info.run_id}/model", "models:/lung-unet/1"):
        loaded = store.load(spec, mlflow_uri=uri)
        assert loaded.version == uri
        assert float(loaded.model.predict_on_batch(bright).max()) < 0.01  # the dark-is-lung model
