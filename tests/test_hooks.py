"""The MLflow hook tracks model namespaces only, and logs what the pipeline tests expect."""

from kedro.pipeline import node, pipeline

from covid_imaging.hooks import _flatten, model_namespace


def _identity(x):
    return x


def test_model_namespace_of_nodes():
    template = pipeline([node(_identity, "a", "b", name="train")])
    assert model_namespace(next(iter(pipeline(template, namespace="segmentation.unet").nodes))) == "segmentation.unet"
    assert model_namespace(next(iter(pipeline(template, namespace="classification.hrnet").nodes))) == "classification.hrnet"
    assert model_namespace(next(iter(template.nodes))) is None
    assert model_namespace(next(iter(pipeline(template, namespace="ingestion").nodes))) is None


def test_nested_parameters_are_flattened_with_dots():
    flat: dict[str, str] = {}
    _flatten("", {"model": {"builder": "unet", "base_filters": 16}, "training": {"epochs": 2}}, flat)
    assert flat == {"model.builder": "unet", "model.base_filters": "16", "training.epochs": "2"}


def test_child_runs_end_when_their_models_nodes_end(tmp_path, monkeypatch):
    """Each model's run lasts as long as its own nodes, not as long as the whole pipeline."""
    import time

    import mlflow

    from covid_imaging.hooks import ModelRunTrackingHook

    monkeypatch.chdir(tmp_path)  # artifacts land beside the database, not in the checkout
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("hook_test")  # not the active experiment id of an earlier test's database
    monkeypatch.setattr("covid_imaging.hooks.describe_compute_device", lambda: "CPU")
    template = pipeline([node(_identity, "a", "b", name="train"), node(_identity, "b", "training_history", name="curves")])
    first = pipeline(template, namespace="segmentation.unet")
    second = pipeline(template, namespace="segmentation.fcn")
    hook = ModelRunTrackingHook()
    with mlflow.start_run(run_name="segmentation"):
        hook.before_pipeline_run(run_params={"pipeline_names": ["segmentation"]}, pipeline=first + second)
        for model_pipeline, seconds in ((first, 0.6), (second, 0.2)):
            for one in model_pipeline.nodes:
                hook.before_node_run(one, {})
                time.sleep(seconds / 2)
                outputs = {name: {"loss": [0.5, 0.4]} for name in one.outputs if name.endswith("training_history")}
                hook.after_node_run(one, outputs)
        runs = {name: mlflow.MlflowClient().get_run(run_id) for name, run_id in hook._runs.items()}
        # both ended while the pipeline (the parent run) was still running, each when its
        # own last node ended: the U-Net's run is over before the FCN's first node starts
        assert all(run.info.status == "FINISHED" for run in runs.values())
        unet, fcn = runs["segmentation.unet"].info, runs["segmentation.fcn"].info
        assert unet.start_time + 600 <= unet.end_time <= fcn.start_time
        assert fcn.start_time + 200 <= fcn.end_time
        assert mlflow.active_run().info.status == "RUNNING"
        node_seconds = {name: run.data.metrics["node_seconds"] for name, run in runs.items()}
        assert node_seconds["segmentation.unet"] >= 0.6 and node_seconds["segmentation.fcn"] >= 0.2
        history = mlflow.MlflowClient().get_metric_history(runs["segmentation.unet"].info.run_id, "loss")
        assert [metric.step for metric in history] == [1, 2]  # epochs, as the plots count them
        assert all(metric.timestamp > 0 for metric in history)
        hook.after_pipeline_run(run_params={"pipeline_names": ["segmentation"]}, pipeline=first + second,
                                catalog=None)


def test_one_hook_instance_follows_each_runs_tracking_uri(tmp_path, monkeypatch):
    """Settings keep one hook per process: a second project's runs land in its own database."""
    import mlflow

    from covid_imaging.hooks import ModelRunTrackingHook

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("covid_imaging.hooks.describe_compute_device", lambda: "CPU")
    model = pipeline(pipeline([node(_identity, "a", "b", name="train")]), namespace="segmentation.unet")
    hook = ModelRunTrackingHook()  # the same instance for both runs, as settings.HOOKS holds it
    for project in ("first", "second"):
        (tmp_path / project).mkdir()
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / project / 'mlflow.db'}")
        mlflow.set_experiment(project)
        with mlflow.start_run(run_name="segmentation"):
            hook.before_pipeline_run(run_params={"pipeline_names": ["segmentation"], "runner": None}, pipeline=model)
            for one in model.nodes:
                hook.before_node_run(one, {})
                hook.after_node_run(one, {})
        names = {run.info.run_name for run in mlflow.search_runs(search_all_experiments=True, output_format="list")}
        assert names == {"segmentation", "segmentation.unet"}, project


def test_a_cv_models_run_logs_the_registry_block_it_reads(tmp_path, monkeypatch):
    """ct_classification_cv.<model> reads ct_classification.<model>'s parameters: its run
    logs them under the same keys as the single-split run, and no other model's."""
    import mlflow

    from covid_imaging.hooks import ModelRunTrackingHook

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("covid_imaging.hooks.describe_compute_device", lambda: "CPU")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("cv")
    template = pipeline([node(_identity, "params:model", "b", name="train_test_folds")])
    cv = pipeline(template, namespace="ct_classification_cv.vgg16",
                  parameters={"params:model": "params:ct_classification.vgg16.model"})
    hook = ModelRunTrackingHook()
    with mlflow.start_run(run_name="ct_classification_cv"):
        hook.before_pipeline_run(run_params={"pipeline_names": ["ct_classification_cv"]}, pipeline=cv)
        one = next(iter(cv.nodes))
        hook.before_node_run(one, {"params:ct_classification.vgg16.model": {"builder": "vgg16"},
                                   "params:ct_classification.vgg19.model": {"builder": "vgg19"},
                                   "params:splits": {"seed": 1}})
        params = mlflow.MlflowClient().get_run(hook._runs["ct_classification_cv.vgg16"]).data.params
        assert params == {"model.builder": "vgg16"}
        hook.after_node_run(one, {})


PARALLEL = {"runner": "kedro.runner.parallel_runner.ParallelRunner"}


def test_a_declared_memory_dataset_between_nodes_stops_a_parallel_run_before_it_starts():
    import pytest
    from kedro.io import DataCatalog, MemoryDataset, SharedMemoryDataCatalog

    from covid_imaging.hooks import MemoryDatasetAcrossProcessesError, ParallelRunnerCatalogCheck

    two_nodes = pipeline([node(_identity, "a", "b", name="first"), node(_identity, "b", "c", name="second")])
    check = ParallelRunnerCatalogCheck()
    declared = SharedMemoryDataCatalog({"b": MemoryDataset()})
    with pytest.raises(MemoryDatasetAcrossProcessesError, match=r"\['b'\]"):
        check.before_pipeline_run(PARALLEL, two_nodes, declared)
    # left to the runner's default (shared between processes), or run in one process: no error
    check.before_pipeline_run(PARALLEL, two_nodes, SharedMemoryDataCatalog({}))
    check.before_pipeline_run({"runner": "None"}, two_nodes, DataCatalog({"b": MemoryDataset()}))


def test_no_registered_pipeline_passes_a_declared_memory_dataset_between_processes(kedro_project):
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession

    from covid_imaging.hooks import memory_datasets_crossing_processes

    with KedroSession.create(project_path=kedro_project) as session:
        catalog = session.load_context().catalog
    for name, registered in pipelines.items():
        assert memory_datasets_crossing_processes(registered, catalog) == [], name


def test_a_long_lived_worker_follows_each_driver_runs_child_runs(monkeypatch):
    """A Dask worker keeps one hook for run after run and never sees before_pipeline_run:
    a second driver run's ids (from the environment) replace the first's."""
    import json

    from covid_imaging.hooks import RUNS_ENV, ModelRunTrackingHook

    hook = ModelRunTrackingHook()
    for run_id in ("run-a", "run-b"):
        monkeypatch.setenv(RUNS_ENV, json.dumps({"tracking_uri": "sqlite:///unused.db", "driver_pid": -1,
                                                 "runs": {"segmentation.unet": run_id, "segmentation.fcn": f"{run_id}-fcn"}}))
        assert hook._child_run("segmentation.unet") == run_id
        assert hook._child_run("segmentation.fcn") == f"{run_id}-fcn"
        assert hook._child_run("segmentation.unet") == run_id  # the same run: the cache stays


def test_the_run_summary_never_shows_a_tracking_password():
    from covid_imaging.hooks import without_password

    assert without_password("postgresql://ml:s3cret@db.example:5432/mlflow") == "postgresql://ml:***@db.example:5432/mlflow"
    assert without_password("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert without_password("http://tracking:5000") == "http://tracking:5000"


KILLED_RUN = """
import sys
import mlflow
from kedro.pipeline import node, pipeline
from covid_imaging.hooks import ModelRunTrackingHook

mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("interrupted")
model = pipeline(pipeline([node(abs, "a", "b", name="train")]), namespace="segmentation.unet")
hook = ModelRunTrackingHook()
mlflow.start_run(run_name="segmentation")
hook.before_pipeline_run(run_params={"pipeline_names": ["segmentation"], "runner": None}, pipeline=model)
hook.before_node_run(next(iter(model.nodes)), {})
raise KeyboardInterrupt  # Ctrl-C in the middle of training: Kedro calls no error hook
"""


def test_a_run_cut_short_leaves_no_child_run_running(tmp_path):
    import subprocess
    import sys

    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run([sys.executable, "-c", KILLED_RUN, uri], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "KeyboardInterrupt" in result.stderr
    mlflow.set_tracking_uri(uri)
    runs = {run.info.run_name: run.info.status for run in mlflow.search_runs(search_all_experiments=True,
                                                                              output_format="list")}
    assert runs["segmentation.unet"] == "KILLED"


def test_after_a_failure_in_another_process_the_models_that_finished_stay_finished(tmp_path, monkeypatch):
    """Under ParallelRunner the driver never sees a model end (its workers do): when one
    model fails, a model whose every node logged its time is FINISHED, not FAILED."""
    import time

    import mlflow

    from covid_imaging.hooks import ModelRunTrackingHook

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("parallel_failure")
    template = pipeline([node(_identity, "a", "b", name="train"), node(_identity, "b", "c", name="evaluate")])
    models = pipeline(template, namespace="segmentation.unet") + pipeline(template, namespace="segmentation.fcn")
    hook = ModelRunTrackingHook()
    with mlflow.start_run(run_name="segmentation"):
        hook.before_pipeline_run(run_params={"pipeline_names": ["segmentation"], "runner": "ParallelRunner"},
                                 pipeline=models)
        client = mlflow.MlflowClient()
        for name in ("train", "evaluate"):  # what the workers log for the U-Net's two nodes
            client.log_metric(hook._runs["segmentation.unet"], f"node_seconds.{name}", 1.0, int(time.time() * 1000))
        client.log_metric(hook._runs["segmentation.fcn"], "node_seconds.train", 1.0, int(time.time() * 1000))
        hook.on_pipeline_error()  # the FCN's evaluate failed
        status = {name: client.get_run(run_id).info.status for name, run_id in hook._runs.items()}
    assert status == {"segmentation.unet": "FINISHED", "segmentation.fcn": "FAILED"}
