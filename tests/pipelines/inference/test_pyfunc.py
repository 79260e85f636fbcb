"""The inference as an MLflow pyfunc model: logged by a kedro run, loaded, predicting paths."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.conftest import run_kedro
from tests.inference.helpers import NEW_VERSION, OLD_VERSION, write_images
from tests.pipelines.inference.conftest import TINY_PARAMS

pytestmark = pytest.mark.slow


def _close_session_runs():
    """As the kedro_project fixture does between tests: no run left active, and
    kedro-mlflow's hook (one object per process) forgets the last session's run id."""
    from kedro_mlflow.framework.hooks.mlflow_hook import mlflow_hook

    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow_hook.run_id = None


def test_logged_model_predicts_a_dataframe_of_paths(inference_project, tmp_path):
    versions = {"segmentation.unet": OLD_VERSION}
    run_kedro(inference_project, "inference_model", params={**TINY_PARAMS, "inference.versions": versions})
    _close_session_runs()
    logged = json.loads((inference_project / "data/06_models/synthetic_demo/inference_mlflow_model.json").read_text())
    assert logged["models"] == {**versions, "classification.simple_cnn_scratch": NEW_VERSION}

    source, output = tmp_path / "new", tmp_path / "out"
    sizes = write_images(source)
    paths = [str(source / "a.png"), str(source / "nested/b16.png"), str(source / "c.jpg"), str(source / "broken.png")]
    mlflow.set_tracking_uri(f"sqlite:///{inference_project / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(logged["model_uri"])
    table = model.predict(pd.DataFrame({"image_path": paths}))
    assert list(table["image_key"]) == paths  # input order, one row per path
    assert table["error"].notna().tolist() == [False, False, False, True]
    good = table[table["error"].isna()]
    assert list(zip(good["height"], good["width"], strict=True)) == [sizes["a"], sizes["nested/b16"], sizes["c"]]

    # the same numbers as the pipeline on the same images
    run_kedro(inference_project, "inference", params={
        **TINY_PARAMS, "inference.source": str(source), "inference.output": str(output), "inference.versions": versions,
    })
    (run,) = [p for p in output.iterdir() if not p.name.startswith(".")]
    pipeline = pd.read_csv(run / "predictions.csv").set_index("image_id")
    for path, row in good.set_index("image_key").iterrows():
        image_id = {"a.png": "a", "b16.png": "nested/b16", "c.jpg": "c"}[path.rsplit("/", 1)[-1]]
        assert row["lung_area_px"] == pipeline.loc[image_id, "lung_area_px"]
        assert row["simple_cnn_scratch.p_covid"] == pytest.approx(pipeline.loc[image_id, "simple_cnn_scratch.p_covid"], abs=1e-6)

    # The logged settings keep no compute backend (a served model computes where it is
    # served), and a model logged when inference had its own `n_workers` still loads.
    local = Path(mlflow.artifacts.download_artifacts(logged["model_uri"], dst_path=str(tmp_path / "logged")))
    (config_path,) = local.rglob("inference_config.json")
    config = json.loads(config_path.read_text())
    assert config["settings"]["compute"] == {}
    config["settings"]["n_workers"] = 0
    config_path.write_text(json.dumps(config))
    older = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"image_path": paths[:1]}))
    assert older["lung_area_px"].iloc[0] == table["lung_area_px"].iloc[0]
