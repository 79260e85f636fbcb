"""Kedro hooks: one MLflow run per trained model.

kedro-mlflow opens one run per ``kedro run`` (the parent) and logs every parameter.
This hook adds a child run for each model namespace (``segmentation.unet``,
``classification.resnet50``, ...), so the MLflow compare view shows the models side by
side. Logging lives here, in one place, driven by the names of node outputs:

* ``<ns>.training_history`` (dict of per-epoch lists) → metric curves, step = epoch (from 1;
  ``cv_fold_*`` lists are per fold, step = the fold number from 0);
* ``<ns>.*_metrics`` (dict of floats: test metrics, Grad-CAM lung share) → final metrics;
* ``<ns>.model`` (Keras model) → a ``.keras`` artifact;
* matplotlib figures → PNG artifacts under ``plots/``;
* DataFrames → CSV artifacts under ``tables/``;
* ``params:<ns>.*`` inputs → run parameters (never credentials: those are not parameters).

A child run starts with its namespace's first node and ends as soon as its last node
has run. Kedro interleaves the models' nodes (all trainings, then all evaluations), so a
run's span can include other models' nodes; the metric ``node_seconds`` is the time of
the model's own nodes. Versioned inputs (e.g. the U-Net reused by ``classification_models``)
are logged with the version used. The run ends with one summary block.

Runners that run nodes in other processes (``ParallelRunner``, the Dask runner in
``covid_imaging.runner``) get a fresh or forked copy of this hook per process. For them
the child runs are all created before the pipeline starts, in the driver, and their ids
and the tracking URI are handed to the other processes in the environment variable
``COVID_IMAGING_MLFLOW_RUNS`` (the Dask runner sends it to its workers): every process
logs into the same child run per namespace, and the driver closes them when the
pipeline ends (so there a run spans the whole pipeline).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
import pandas as pd
from kedro.framework.hooks import hook_impl
from kedro.io import DatasetError, MemoryDataset, SharedMemoryDataset
from kedro.pipeline import Node
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from covid_imaging.progress import format_duration
from covid_imaging.registry import CT_CV_NAMESPACE_ROOT, namespace_roots

logger = logging.getLogger(__name__)

# Every registry family's namespace root (segmentation, classification, ct_classification),
# plus the cross-source segmentation pipeline's runs (one per training recipe, not a model)
# and the CT models' rotated test folds (one per model).
TRACKED_NAMESPACE_ROOTS = (*namespace_roots(), "segmentation_cross_source", CT_CV_NAMESPACE_ROOT)
MAX_PARAM_LENGTH = 6000
RUNS_ENV = "COVID_IMAGING_MLFLOW_RUNS"  # {"tracking_uri": ..., "runs": {namespace: run id}}
# Runners whose nodes (and hook calls) stay in the driver process; others share pre-created runs.
NODE_SECONDS = "node_seconds"  # a model's own node time: node_seconds.<node> each, and their sum
IN_PROCESS_RUNNERS = ("SequentialRunner", "ThreadRunner")
# Shown as a plain ML experiment in the MLflow 3 UI (not a GenAI one that opens on traces).
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "One parent run per `kedro run`; one child run per model (run name = model namespace, "
        "tags task/model/dataset). Filter: tags.task = 'segmentation', then Compare."
    ),
}
REPORTS_TO_ANNOUNCE = ("segmentation_comparison", "segmentation_cross_source", "classification_comparison", "shortcut_audit", "rejected_files", "ct_classification_comparison",
                       "ct_classification_cv_comparison")


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = str(value)[:MAX_PARAM_LENGTH]


def git_commit() -> str:
    """The checked-out commit (with '-dirty' when there are uncommitted changes)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
        return commit + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def describe_compute_device() -> str:
    """'CPU' or the GPU's name, for the device tag (TensorFlow imported only when needed)."""
    try:
        from covid_imaging.segmentation.training import describe_device  # noqa: PLC0415

        return describe_device()
    except Exception:  # noqa: BLE001 - a tag must never break a run
        return "unknown"


def model_namespace(node: Node) -> str | None:
    """The model namespace of a node (``segmentation.unet``), or None for shared nodes."""
    namespace = node.namespace or ""
    parts = namespace.split(".")
    if len(parts) >= 2 and parts[0] in TRACKED_NAMESPACE_ROOTS:
        return ".".join(parts[:2])
    return None


class ModelRunTrackingHook:
    """Creates and fills one MLflow child run per model namespace."""

    def __init__(self) -> None:
        self._runs: dict[str, str] = {}
        self._open: dict[str, str] = {}  # namespace -> run id, runs not ended yet
        self._remaining: dict[str, set[str]] = {}  # namespace -> names of its nodes still to run
        self._durations: dict[str, float] = {}  # namespace -> seconds of its own nodes (runs ended here)
        self._node_started: dict[str, float] = {}
        self._dataset_name = "unknown"
        self._env = "base"
        self._client: MlflowClient | None = None
        self._client_pid: int | None = None
        self._catalog = None
        self._versions: dict[str, tuple[str, str]] = {}  # dataset -> (loaded|saved, version)
        self._started = 0.0
        self._experiment = ""

    @hook_impl
    def after_context_created(self, context) -> None:
        # No --env: Kedro reads conf/base plus conf/local (machine-only settings), i.e. base.
        self._env = context.env or "base"
        try:  # the config loader, not context.params: that would type-check every node now
            self._dataset_name = str(context.config_loader["parameters"].get("dataset_name", "unknown"))
        except (KeyError, AttributeError, ValueError):
            self._dataset_name = "unknown"

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline) -> None:
        self._runs, self._open, self._durations, self._versions, self._node_started = {}, {}, {}, {}, {}
        if not getattr(self, "_exit_handler", False):  # once per hook and process
            atexit.register(self._kill_open_runs)
            self._exit_handler = True
        # Settings hold one hook for the process: a client from an earlier run (another
        # project's tracking URI, e.g. a previous session in the same process) must not be reused.
        self._client, self._client_pid = None, None
        self._started = time.monotonic()
        self._remaining = {}
        for node in pipeline.nodes:
            namespace = model_namespace(node)
            if namespace:
                self._remaining.setdefault(namespace, set()).add(node.name)
        parent = mlflow.active_run()
        if parent is not None:  # kedro-mlflow opened it; same tags as the children
            client = MlflowClient()
            self._experiment = client.get_experiment(parent.info.experiment_id).name
            for key, value in EXPERIMENT_TAGS.items():
                client.set_experiment_tag(parent.info.experiment_id, key, value)
            mlflow.set_tags({"dataset": self._dataset_name, "kedro_env": self._env, "git_commit": git_commit()})
        os.environ.pop(RUNS_ENV, None)
        # Kedro records the runner before defaulting it: "None" is its SequentialRunner.
        runner = str(run_params.get("runner") or "None")
        in_process = runner == "None" or any(name in runner for name in IN_PROCESS_RUNNERS)
        if parent is not None and not in_process:
            for namespace in sorted(self._remaining):
                self._child_run(namespace)
            os.environ[RUNS_ENV] = json.dumps(
                {"tracking_uri": mlflow.get_tracking_uri(), "runs": self._runs, "driver_pid": os.getpid()}
            )

    def _mlflow_client(self, tracking_uri: str | None = None) -> MlflowClient:
        if self._client is None or self._client_pid != os.getpid():  # a forked copy: own connections
            self._client = MlflowClient(tracking_uri=tracking_uri or mlflow.get_tracking_uri())
            self._client_pid = os.getpid()
        return self._client

    def _child_run(self, namespace: str) -> str | None:
        shared = json.loads(os.environ.get(RUNS_ENV) or "{}")  # the driver created the runs
        # only in the driver's worker processes (never the driver itself, or a later run in it)
        from_driver = shared.get("driver_pid") != os.getpid() and namespace in shared.get("runs", {})
        if from_driver and shared["runs"] != getattr(self, "_driver_runs", None):
            # A long-lived worker (a Dask cluster) serves run after run and never sees
            # before_pipeline_run: a new driver run's ids replace the old ones, client included.
            self._runs, self._versions, self._node_started = {}, {}, {}
            self._client, self._client_pid = None, None
            self._driver_runs = shared["runs"]
        if namespace in self._runs:
            self._mlflow_client()
            return self._runs[namespace]
        if from_driver:
            self._mlflow_client(shared.get("tracking_uri"))
            self._runs[namespace] = shared["runs"][namespace]
            return self._runs[namespace]
        parent = mlflow.active_run()
        if parent is None:  # tracking disabled for this pipeline
            return None
        if namespace not in self._runs:
            run = self._mlflow_client().create_run(
                experiment_id=parent.info.experiment_id,
                run_name=namespace,
                tags={
                    "mlflow.parentRunId": parent.info.run_id,
                    "model": namespace.split(".")[-1],
                    "task": namespace.split(".")[0],
                    "device": describe_compute_device(),
                    "dataset": self._dataset_name,
                    "kedro_env": self._env,
                    "git_commit": git_commit(),
                },
            )
            self._runs[namespace] = self._open[namespace] = run.info.run_id
            logger.info("MLflow run '%s' (%s) started", namespace, run.info.run_id)
        return self._runs[namespace]

    def _tracked(self, node: Node) -> tuple[str, str] | None:
        """(namespace, child run id) when the node belongs to a tracked model run."""
        namespace = model_namespace(node)
        run_id = self._child_run(namespace) if namespace else None
        return (namespace, run_id) if run_id else None

    def _dataset_version(self, name: str, saved: bool) -> str | None:
        """The version a versioned catalog entry loaded or saved in this run, else None."""
        try:
            dataset = self._catalog.get(name) if self._catalog is not None else None
        except Exception:  # noqa: BLE001 - a pattern that does not resolve is simply unversioned
            return None
        if dataset is None or not hasattr(dataset, "resolve_load_version"):
            return None
        try:
            return dataset.resolve_save_version() if saved else dataset.resolve_load_version()
        except Exception:  # noqa: BLE001 - no version (yet): nothing to report
            return None

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, node: Node) -> None:
        version = self._dataset_version(dataset_name, saved=False)
        if version is None or self._versions.get(dataset_name, ("", ""))[0] == "saved":
            return  # a model saved earlier in this run: already reported as saved
        self._versions[dataset_name] = ("loaded", version)
        logger.info("Using %s version %s", dataset_name, version)
        tracked = self._tracked(node)
        tag = {f"input_version.{dataset_name}": version}
        if tracked is not None:
            self._client.set_tag(tracked[1], *next(iter(tag.items())))
        elif mlflow.active_run() is not None:
            mlflow.set_tags(tag)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, node: Node) -> None:
        version = self._dataset_version(dataset_name, saved=True)
        if version is not None:
            self._versions[dataset_name] = ("saved", version)

    @hook_impl
    def before_node_run(self, node: Node, inputs: dict[str, Any]) -> None:
        tracked = self._tracked(node)
        if tracked is None:
            return
        namespace, run_id = tracked
        self._node_started[node.name] = time.monotonic()
        params: dict[str, str] = {}
        model = namespace.split(".", 1)[1]
        # The model's own parameters: its namespace's, or (ct_classification_cv) the
        # registry block of the same model that the namespace reads them from.
        prefixes = [f"params:{root}.{model}." for root in TRACKED_NAMESPACE_ROOTS]
        for name, value in inputs.items():
            prefix = next((prefix for prefix in prefixes if name.startswith(prefix)), None)
            if prefix is not None:
                _flatten(name[len(prefix):], value, params)
        existing = self._client.get_run(run_id).data.params
        new = {key: value for key, value in params.items() if key not in existing}
        if new:
            self._client.log_batch(
                run_id, params=[mlflow.entities.Param(key, value) for key, value in new.items()]
            )

    @hook_impl
    def after_node_run(self, node: Node, outputs: dict[str, Any]) -> None:
        tracked = self._tracked(node)
        if tracked is None:
            return
        namespace, run_id = tracked
        started = self._node_started.pop(node.name, None)
        if started is not None:
            # logged by the process that ran the node (a ParallelRunner or Dask worker too);
            # the run's node_seconds is their sum, taken when the run ends
            self._client.log_metric(run_id, f"{NODE_SECONDS}.{node.name.rsplit('.', 1)[-1]}",
                                    time.monotonic() - started, int(time.time() * 1000), 0)
        for name, value in outputs.items():
            self._log_output(run_id, name.rsplit(".", 1)[-1], value)
        remaining = self._remaining.get(namespace, set())
        remaining.discard(node.name)
        if not remaining and namespace in self._open:  # the model's last node: end its run now
            self._end_run(namespace, RunStatus.to_string(RunStatus.FINISHED))

    def _log_output(self, run_id: str, short_name: str, value: Any) -> None:
        from matplotlib.figure import Figure  # noqa: PLC0415

        client = self._client
        if short_name == "training_history" and isinstance(value, dict):
            metrics, now = [], int(time.time() * 1000)
            for metric, values in value.items():
                # step = epoch from 1, as the plots count; cross-validation lists are per fold (cv_fold 0..k-1)
                first = 0 if metric.startswith("cv_fold_") else 1
                for epoch, number in enumerate(values, start=first):
                    if isinstance(number, int | float) and math.isfinite(number):
                        metrics.append(mlflow.entities.Metric(metric, float(number), now, epoch))
            for start in range(0, len(metrics), 900):
                client.log_batch(run_id, metrics=metrics[start : start + 900])
        elif short_name.endswith("_metrics") and isinstance(value, dict):
            now = int(time.time() * 1000)
            metrics = [
                mlflow.entities.Metric(key, float(number), now, 0)
                for key, number in value.items()
                if isinstance(number, int | float) and math.isfinite(number)
            ]
            client.log_batch(run_id, metrics=metrics)
        elif isinstance(value, Figure):
            client.log_figure(run_id, value, f"plots/{short_name}.png")
        elif isinstance(value, dict) and value and all(isinstance(v, Figure) for v in value.values()):
            for key, figure in value.items():
                client.log_figure(run_id, figure, f"plots/{short_name}/{key}.png")
        elif isinstance(value, pd.DataFrame):
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / f"{short_name}.csv"
                value.to_csv(path, index=False)
                client.log_artifact(run_id, str(path), "tables")
        elif short_name == "model" and hasattr(value, "save"):
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "model.keras"
                value.save(path)
                client.log_artifact(run_id, str(path), "model")

    def _end_run(self, namespace: str, status: str) -> None:
        run_id = self._open.pop(namespace)
        client = self._mlflow_client()
        metrics = client.get_run(run_id).data.metrics
        per_node = [value for key, value in metrics.items() if key.startswith(f"{NODE_SECONDS}.")]
        nodes = {name.rsplit(".", 1)[-1] for name in self._remaining.get(namespace, ())}
        if status == RunStatus.to_string(RunStatus.FAILED) and nodes and all(
            f"{NODE_SECONDS}.{name}" in metrics for name in nodes
        ):
            # every node of this model ran (in another process, which logged its time):
            # another model's failure does not make this one failed
            status = RunStatus.to_string(RunStatus.FINISHED)
        if per_node:
            seconds = self._durations[namespace] = sum(per_node)
            client.log_metric(run_id, NODE_SECONDS, seconds, int(time.time() * 1000), 0)
            logger.info("MLflow run '%s' (%s) %s; its nodes took %s", namespace, run_id, status.lower(),
                        format_duration(seconds))
        else:
            logger.info("MLflow run '%s' (%s) %s", namespace, run_id, status.lower())
        client.set_terminated(run_id, status)

    def _kill_open_runs(self) -> None:
        """At exit: runs still open were cut short (Ctrl-C, SIGTERM), which Kedro reports to no hook."""
        if self._open:
            try:
                self._close_runs(RunStatus.to_string(RunStatus.KILLED))
            except Exception as error:  # noqa: BLE001 - at exit, a tracking store that is gone is not an error
                logger.warning("Could not mark the open MLflow runs as killed: %s", error)

    def _close_runs(self, status: str) -> None:
        for namespace in list(self._open):  # only the process that created a run ends it
            self._end_run(namespace, status)
        os.environ.pop(RUNS_ENV, None)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._close_runs(RunStatus.to_string(RunStatus.FINISHED))
        lines = [
            f"pipeline {'+'.join(run_params.get('pipeline_names') or ['__default__'])} on data set "
            f"'{self._dataset_name}' (env {self._env}) finished in {format_duration(time.monotonic() - self._started)}",
        ]
        for name in REPORTS_TO_ANNOUNCE:
            if name in pipeline.all_outputs():
                lines.append(f"{name}: {catalog.get(name)._describe().get('filepath')}")
        for name, (how, version) in sorted(self._versions.items()):
            lines.append(f"{how} {name} version {version}")
        for namespace, seconds in self._durations.items():
            lines.append(f"{namespace}: its nodes took {format_duration(seconds)} (MLflow run {self._runs[namespace]})")
        if self._runs:
            uri = without_password(mlflow.get_tracking_uri())
            lines.append(f"MLflow experiment '{self._experiment}' in {uri}: mlflow ui --backend-store-uri {uri}")
        logger.info("Run summary\n  %s", "\n  ".join(lines))

    @hook_impl
    def on_pipeline_error(self) -> None:
        if self._open:
            self._close_runs(RunStatus.to_string(RunStatus.FAILED))


def without_password(uri: str) -> str:
    """``uri`` with the password of a ``user:password@`` part replaced (for logs)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class MemoryDatasetAcrossProcessesError(DatasetError):
    """A declared in-memory dataset would be passed between ParallelRunner's processes."""


def memory_datasets_between_nodes(pipeline, catalog) -> list[str]:
    """Datasets one node of ``pipeline`` saves and another loads that live in one process's
    memory in ``catalog`` (``MemoryDataset``): what a runner with several processes or
    machines must share itself (the Dask runner publishes them on its scheduler)."""
    consumed = {name for node in pipeline.nodes for name in node.inputs}
    return sorted(name for name in pipeline.all_outputs() & consumed if isinstance(catalog.get(name), MemoryDataset))


def memory_datasets_crossing_processes(pipeline, catalog) -> list[str]:
    """Those declared as a plain ``MemoryDataset`` (not ParallelRunner's shared kind):
    under ParallelRunner each process would get its own empty copy."""
    return [name for name in memory_datasets_between_nodes(pipeline, catalog)
            if not isinstance(catalog.get(name), SharedMemoryDataset)]


class ParallelRunnerCatalogCheck:
    """Stops a ParallelRunner run before its first node when a declared ``MemoryDataset``
    would cross processes (Kedro pickles it into each process, so the consumer would read
    an empty copy), naming the datasets and the fix."""

    @hook_impl(tryfirst=True)  # before kedro-mlflow opens a parent run that nothing would close
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        if "ParallelRunner" not in str(run_params.get("runner") or ""):
            return
        crossing = memory_datasets_crossing_processes(pipeline, catalog)
        if crossing:
            raise MemoryDatasetAcrossProcessesError(
                f"{crossing} are declared as MemoryDataset in the catalog but pass between nodes, which "
                "ParallelRunner runs in separate processes: remove their catalog entries (the runner then "
                "shares them between processes) or give them a file-backed type"
            )

