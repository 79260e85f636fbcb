"""Beyond one process: preprocessing on a 2-worker LocalCluster, the model pipelines under
ParallelRunner and the Dask runner, each with the outputs of the in-process run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
import yaml

from covid_imaging.compute import close_dask_clients
from covid_imaging.pipelines.segmentation.pipeline import ENSEMBLE, SEGMENTATION_MODELS
from covid_imaging.runner import DistributedDatasetError, _DaskDataset
from tests.conftest import (
    PROJECT_ROOT,
    nested_params,
    run_kedro,
    tiny_demo_params,
    tiny_segmentation_params,
)

pytestmark = pytest.mark.slow

TINY = tiny_demo_params() | tiny_segmentation_params(SEGMENTATION_MODELS, epochs=1)
TINY |= {f"segmentation.{model}.stress_test.kinds": ["effusion"] for model in (*SEGMENTATION_MODELS, ENSEMBLE)}
LOCAL_CLUSTER = {"compute.dask.scheduler_address": "local", "compute.dask.n_workers": 2}


def _run_cli(project, *arguments: str) -> None:
    """``kedro run ...`` in a fresh process, as a user runs it (worker processes are
    forked from a process that has not trained anything yet)."""
    result = subprocess.run([sys.executable, "-m", "kedro", "run", *arguments], cwd=project, capture_output=True,
                            text=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _images(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*.png"))}


def _model_outputs(project) -> dict[str, pd.DataFrame]:
    reports = project / "data/08_reporting/synthetic_demo"
    tables = {"comparison": pd.read_csv(reports / "segmentation_comparison.csv")}
    for model in (*SEGMENTATION_MODELS, ENSEMBLE):
        for name in ("per_image_metrics", "stress_test"):
            tables[f"{model}/{name}"] = pd.read_csv(reports / "segmentation" / model / f"{name}.csv")
    return tables


def _assert_same(expected: dict[str, pd.DataFrame], actual: dict[str, pd.DataFrame]) -> None:
    assert expected.keys() == actual.keys()
    for name, table in expected.items():
        pd.testing.assert_frame_equal(table, actual[name], check_exact=False, rtol=1e-5, atol=1e-6, obj=name)


def _child_runs(project, pipeline: str):
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = sorted((r for r in runs if r.info.run_name == pipeline), key=lambda r: r.info.start_time)[-1]
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


@pytest.fixture
def prepared(kedro_project):
    # the tiny parameters in the project's own local environment, so `kedro run` uses them too
    tiny = kedro_project / "conf/local/parameters/tiny.yml"
    tiny.parent.mkdir(parents=True, exist_ok=True)
    tiny.write_text(yaml.safe_dump(nested_params(TINY)))
    run_kedro(kedro_project, "data_preparation")
    yield kedro_project
    close_dask_clients()


def test_preprocessing_on_a_local_cluster_writes_the_same_images(prepared):
    folder = prepared / "data/04_feature/synthetic_demo/preprocessed"
    in_process = _images(folder)
    table = (prepared / "data/05_model_input/synthetic_demo/model_input_table.csv").read_bytes()
    assert len(in_process) > 20
    shutil.rmtree(folder)
    run_kedro(prepared, "preprocessing", params=LOCAL_CLUSTER)
    assert _images(folder) == in_process
    assert (prepared / "data/05_model_input/synthetic_demo/model_input_table.csv").read_bytes() == table


def test_data_preparation_under_parallel_runner_writes_what_the_in_process_run_writes(prepared):
    """From the demo generator to the model-input table, with every node in a worker
    process (the splits pass a table between two nodes in memory)."""
    tables = ("03_primary/synthetic_demo/split_table.csv", "05_model_input/synthetic_demo/model_input_table.csv")
    in_process = {name: (prepared / "data" / name).read_bytes() for name in tables}
    images = _images(prepared / "data/04_feature/synthetic_demo/preprocessed")
    for name in tables:
        (prepared / "data" / name).unlink()
    _run_cli(prepared, "--pipelines=data_preparation", "--runner=ParallelRunner", "--runner-params=max_workers=2")
    assert {name: (prepared / "data" / name).read_bytes() for name in tables} == in_process
    assert _images(prepared / "data/04_feature/synthetic_demo/preprocessed") == images


NAMESPACES = {f"segmentation.{model}" for model in (*SEGMENTATION_MODELS, ENSEMBLE)}
DASK_RUN = ("--pipelines=segmentation_models", "--runner=covid_imaging.runner.DaskRunner",
            "--params=compute.dask.scheduler_address=local,compute.dask.n_workers=2")


def _assert_one_finished_child_run_per_model(project) -> None:
    children = _child_runs(project, "segmentation_models")
    # one child run per model, filled from the worker processes and closed by the driver
    assert sorted(r.info.run_name for r in children) == sorted(NAMESPACES)
    assert all(r.info.status == "FINISHED" and "test_dice_post" in r.data.metrics for r in children)
    # each model's own node time, summed over the nodes that ran in the worker processes
    assert all(r.data.metrics["node_seconds"] > 0 for r in children)


def test_model_pipelines_under_parallel_runner_match_the_in_process_run(prepared):
    run_kedro(prepared, "segmentation_models")
    in_process = _model_outputs(prepared)
    _run_cli(prepared, "--pipelines=segmentation_models", "--runner=ParallelRunner", "--runner-params=max_workers=2")
    _assert_same(in_process, _model_outputs(prepared))
    _assert_one_finished_child_run_per_model(prepared)


def test_model_pipelines_run_on_a_local_cluster_with_the_dask_runner(prepared):
    _run_cli(prepared, *DASK_RUN)
    outputs = _model_outputs(prepared)
    assert set(outputs["comparison"]["model"]) == {*SEGMENTATION_MODELS, ENSEMBLE}
    _assert_one_finished_child_run_per_model(prepared)


def test_model_pipelines_on_the_dask_runner_match_the_in_process_run(prepared):
    run_kedro(prepared, "segmentation_models")
    in_process = _model_outputs(prepared)
    _run_cli(prepared, *DASK_RUN)
    _assert_same(in_process, _model_outputs(prepared))


def test_a_memory_dataset_that_cannot_travel_is_named():
    from covid_imaging.compute import ComputeConfig, dask_client

    client = dask_client(ComputeConfig.from_params({"dask": {"scheduler_address": "local", "n_workers": 1}}))
    try:
        dataset = _DaskDataset("segmentation.unet.scratch")
        dataset.save({"ok": 1})
        assert dataset.load() == {"ok": 1} and client.list_datasets() == ("segmentation.unet.scratch",)
        with pytest.raises(DistributedDatasetError, match="'segmentation.unet.scratch' is memory-only"):
            dataset.save(lambda: None)
    finally:
        close_dask_clients()


def test_two_runs_on_one_cluster_keep_their_own_shared_values():
    from covid_imaging.compute import ComputeConfig, dask_client

    client = dask_client(ComputeConfig.from_params({"dask": {"scheduler_address": "local", "n_workers": 1}}))
    try:
        first, second = _DaskDataset("grouped_splits", "run-1"), _DaskDataset("grouped_splits", "run-2")
        first.save("splits of run 1")
        second.save("splits of run 2")
        assert (first.load(), second.load()) == ("splits of run 1", "splits of run 2")
        first.release()
        assert second.load() == "splits of run 2" and client.list_datasets() == ("run-2:grouped_splits",)
    finally:
        close_dask_clients()


def test_data_preparation_runs_with_the_processes_backend(kedro_project):
    run_kedro(kedro_project, "data_preparation", params={**TINY, "compute.backend": "processes", "compute.n_workers": 2})
    assert (kedro_project / "data/05_model_input/synthetic_demo/model_input_table.csv").exists()
