"""Kedro hooks: one MLflow run per trained model.

kedro-mlflow opens one run per ``kedro run`` (the parent) and logs every parameter.
This hook adds a child run for each model namespace (``segmentation.unet``,
``classification.resnet50``, ...), so the MLflow compare view shows the models side by
side. Logging lives here, in one place, driven by the names of node outputs:

* ``<ns>.training_history`` (dict of per-epoch lists) → metric curves, step = epoch;
* ``<ns>.*_metrics`` (dict of floats: test metrics, Grad-CAM lung share) → final metrics;
* ``<ns>.model`` (Keras model) → a ``.keras`` artifact;
* matplotlib figures → PNG artifacts under ``plots/``;
* DataFrames → CSV artifacts under ``tables/``;
* ``params:<ns>.*`` inputs → run parameters (never credentials: those are not parameters).

Runners that run nodes in other processes (``ParallelRunner``, the Dask runner in
``covid_imaging.runner``) get a fresh or forked copy of this hook per process. So the
child runs are all created before the pipeline starts, in the driver, and their ids
and the tracking URI are handed to the other processes in the environment variable
``COVID_IMAGING_MLFLOW_RUNS`` (the Dask runner sends it to its workers): every process
logs into the same child run per namespace, and the driver closes them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from kedro.framework.hooks import hook_impl
from kedro.pipeline import Node
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from covid_imaging.registry import namespace_roots

logger = logging.getLogger(__name__)

# Every registry family's namespace root (segmentation, classification, ct_classification),
# plus the cross-source segmentation pipeline's runs (one per training recipe, not a model).
TRACKED_NAMESPACE_ROOTS = (*namespace_roots(), "segmentation_cross_source")
MAX_PARAM_LENGTH = 6000
RUNS_ENV = "COVID_IMAGING_MLFLOW_RUNS"  # {"tracking_uri": ..., "runs": {namespace: run id}}
REPORTS_TO_ANNOUNCE = ("segmentation_comparison", "segmentation_cross_source", "classification_comparison", "shortcut_audit", "rejected_files")


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
        self._dataset_name = "unknown"
        self._env = "local"
        self._client: MlflowClient | None = None
        self._client_pid: int | None = None
        self._owner = False  # this process created the runs (and closes them)

    @hook_impl
    def after_context_created(self, context) -> None:
        self._env = context.env or "local"
        try:
            self._dataset_name = str(context.config_loader["globals"].get("dataset_name", "unknown"))
        except (KeyError, AttributeError, ValueError):
            self._dataset_name = "unknown"

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline) -> None:
        self._runs, self._owner = {}, False
        os.environ.pop(RUNS_ENV, None)
        if mlflow.active_run() is None:  # tracking disabled for this pipeline
            return
        for namespace in sorted({model_namespace(node) for node in pipeline.nodes} - {None}):
            self._child_run(namespace)
        os.environ[RUNS_ENV] = json.dumps({"tracking_uri": mlflow.get_tracking_uri(), "runs": self._runs})

    def _mlflow_client(self, tracking_uri: str | None = None) -> MlflowClient:
        if self._client is None or self._client_pid != os.getpid():  # a forked copy: own connections
            self._client = MlflowClient(tracking_uri=tracking_uri)
            self._client_pid = os.getpid()
        return self._client

    def _child_run(self, namespace: str) -> str | None:
        if namespace in self._runs:
            self._mlflow_client()
            return self._runs[namespace]
        shared = json.loads(os.environ.get(RUNS_ENV) or "{}")  # another process created the runs
        if namespace in shared.get("runs", {}):
            self._mlflow_client(shared.get("tracking_uri"))
            self._runs[namespace] = shared["runs"][namespace]
            return self._runs[namespace]
        parent = mlflow.active_run()
        if parent is None:  # tracking disabled for this pipeline
            return None
        client = self._mlflow_client()
        run = client.create_run(
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
        self._runs[namespace] = run.info.run_id
        self._owner = True  # created here: closed here
        logger.info("MLflow run '%s' (%s) started for model %s", namespace, run.info.run_id, namespace)
        return self._runs[namespace]

    def _tracked(self, node: Node) -> tuple[str, str] | None:
        """(namespace, child run id) when the node belongs to a tracked model run."""
        namespace = model_namespace(node)
        run_id = self._child_run(namespace) if namespace else None
        return (namespace, run_id) if run_id else None

    @hook_impl
    def before_node_run(self, node: Node, inputs: dict[str, Any]) -> None:
        tracked = self._tracked(node)
        if tracked is None:
            return
        namespace, run_id = tracked
        params: dict[str, str] = {}
        for name, value in inputs.items():
            if name.startswith(f"params:{namespace}."):
                _flatten(name[len(f"params:{namespace}.") :], value, params)
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
        for name, value in outputs.items():
            self._log_output(tracked[1], name.rsplit(".", 1)[-1], value)

    def _log_output(self, run_id: str, short_name: str, value: Any) -> None:
        from matplotlib.figure import Figure  # noqa: PLC0415

        client = self._client
        if short_name == "training_history" and isinstance(value, dict):
            metrics = []
            for metric, values in value.items():
                for epoch, number in enumerate(values):
                    if isinstance(number, int | float) and math.isfinite(number):
                        metrics.append(mlflow.entities.Metric(metric, float(number), 0, epoch))
            for start in range(0, len(metrics), 900):
                client.log_batch(run_id, metrics=metrics[start : start + 900])
        elif short_name.endswith("_metrics") and isinstance(value, dict):
            metrics = [
                mlflow.entities.Metric(key, float(number), 0, 0)
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

    def _close_runs(self, status: str) -> None:
        if not self._owner:  # another process's runs: the driver closes them
            self._runs = {}
            return
        client = self._mlflow_client()
        for namespace, run_id in self._runs.items():
            client.set_terminated(run_id, status)
            logger.info("MLflow run '%s' (%s) finished: %s", namespace, run_id, status)
        self._runs, self._owner = {}, False
        os.environ.pop(RUNS_ENV, None)

    @hook_impl
    def after_pipeline_run(self, pipeline, catalog) -> None:
        for name in REPORTS_TO_ANNOUNCE:
            if name in pipeline.all_outputs():
                filepath = catalog.get(name)._describe().get("filepath")
                logger.info("%s written to %s", name, filepath)
        if self._runs:
            self._close_runs(RunStatus.to_string(RunStatus.FINISHED))
            logger.info(
                "MLflow runs recorded in %s; open the UI with: mlflow ui --backend-store-uri sqlite:///mlflow.db",
                mlflow.get_tracking_uri(),
            )

    @hook_impl
    def on_pipeline_error(self) -> None:
        if self._runs:
            self._close_runs(RunStatus.to_string(RunStatus.FAILED))
