"""A Kedro runner that distributes nodes over a Dask cluster (Kedro's "deploy with Dask" guide).

``kedro run --runner=covid_imaging.runner.DaskRunner --pipeline=segmentation_models``
submits every node as one Dask task that depends on the tasks of the nodes it needs,
so independent nodes (the namespaced model pipelines) run on different workers at the
same time. The cluster is the one of ``compute.dask.scheduler_address``
(``conf/base/parameters/compute.yml``): an address, or ``local`` for a ``LocalCluster``
of ``compute.dask.n_workers``; when it is null, Dask's own configuration
(``DASK_SCHEDULER_ADDRESS``), else a ``LocalCluster`` of ``compute.dask.n_workers``.

What crosses workers, as in the guide:

* catalog datasets are pickled to the worker that runs the node, which reads and
  writes them itself, so their paths must be reachable from every worker: a shared
  file system mounted at the same path (workers are started from the project folder;
  checked before the run) or ``abfs://``;
* memory-only datasets passed from one node to another (``MemoryDataset``, e.g.
  ``grouped_splits``) are published on the scheduler
  (``Client.publish_dataset``) instead of living in one process's memory; a value
  that cannot be sent (unpicklable) fails with an error naming the dataset.

Each worker runs the nodes with the project's hooks (``settings.HOOKS``), so the
per-model MLflow child runs are filled from the workers; plugin hooks such as
kedro-mlflow's node-level parameter logging run only in the driver (the parent run
still gets the parameters that the child runs record per model).
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections import Counter
from dataclasses import replace
from itertools import chain
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from kedro.runner import AbstractRunner
from kedro.runner.task import Task

from covid_imaging.compute import ComputeConfig
from covid_imaging.hooks import RUNS_ENV, memory_datasets_between_nodes


class DistributedDatasetError(DatasetError):
    """A dataset cannot be shared between the workers of a Dask cluster."""


class _DaskDataset(AbstractDataset):
    """A memory-only dataset published on the Dask scheduler under ``<run>:<name>``: two
    runs sharing one cluster never read or release each other's values."""

    def __init__(self, name: str, run: str = "") -> None:
        self.name = name  # the catalog's
        self._name = f"{run}:{name}" if run else name  # the scheduler's

    @staticmethod
    def _client():
        from distributed import get_client  # noqa: PLC0415

        return get_client()  # the worker's client inside a task, the driver's outside

    def load(self) -> Any:
        return self._client().get_dataset(self._name)

    def save(self, data: Any) -> None:
        try:
            pickle.dumps(data)
        except Exception as error:  # noqa: BLE001 - any pickling failure means it cannot travel
            raise DistributedDatasetError(
                f"Dataset '{self.name}' is memory-only and its value ({type(data).__name__}) cannot be sent to "
                f"other Dask workers ({error}). Give it a catalog entry on storage every worker reaches "
                f"(a shared file system or abfs://)."
            ) from error
        client = self._client()
        if self._name in client.list_datasets():
            client.unpublish_dataset(self._name)
        client.publish_dataset(data, name=self._name)

    def _exists(self) -> bool:
        return self._name in self._client().list_datasets()

    def release(self) -> None:
        client = self._client()
        if self._name in client.list_datasets():
            client.unpublish_dataset(self._name)

    def _describe(self) -> dict[str, Any]:
        return {"name": self._name}


def _run_node_on_worker(node, catalog, is_async: bool, run_id: str | None, environment: dict[str, str],
                        *dependencies) -> Any:
    """Run one node on a worker; ``dependencies`` (the futures of its inputs' nodes) only order it."""
    from kedro.framework.hooks.manager import _create_hook_manager, _register_hooks  # noqa: PLC0415
    from kedro.framework.project import PACKAGE_NAME, configure_project, settings  # noqa: PLC0415

    # The MLflow child runs created by this run's driver; none left from an earlier run
    # (a worker outlives runs) when this one has tracking off.
    os.environ.pop(RUNS_ENV, None)
    os.environ.update(environment)
    if PACKAGE_NAME != "covid_imaging":
        configure_project("covid_imaging")
    hook_manager = _create_hook_manager()
    _register_hooks(hook_manager, settings.HOOKS)
    Task(node=node, catalog=catalog, hook_manager=hook_manager, is_async=is_async, run_id=run_id).execute()
    return node.name


def _check_workers_see_the_project(client) -> None:
    """Relative catalog paths resolve against each worker's folder: it must be this project's."""
    here = os.getcwd()
    folders = client.run(os.getcwd)
    elsewhere = {worker: folder for worker, folder in folders.items() if folder != here}
    if elsewhere:
        raise DistributedDatasetError(
            f"Dask workers run in other folders than the project ({here}): {elsewhere}. Start the workers from "
            f"the project folder on a shared file system (the catalog's relative paths resolve there), or "
            f"point the catalog at abfs:// paths and start them there."
        )


class DaskRunner(AbstractRunner):
    """Runs each node as a Dask task, in dependency order, on the cluster of the ``compute`` parameters."""

    def __init__(self, client_args: dict[str, Any] | None = None, is_async: bool = False) -> None:
        super().__init__(is_async=is_async)
        self._client_args = dict(client_args or {})

    def _get_executor(self, max_workers: int):  # the Dask client schedules; no executor
        return None

    def _client(self, catalog):
        """``(client, owned)``: a client this run made itself is closed at its end."""
        from distributed import Client  # noqa: PLC0415

        if self._client_args:
            return Client(**self._client_args), True
        params = catalog.load("params:compute") if "params:compute" in catalog else None
        config = ComputeConfig.from_params(params)
        if config.uses_dask:
            from covid_imaging.compute import dask_client  # noqa: PLC0415

            return dask_client(config), False  # shared with the per-image maps: closed at exit
        import dask  # noqa: PLC0415

        if dask.config.get("scheduler-address", None):
            return Client(), True  # DASK_SCHEDULER_ADDRESS, Dask's own setting
        from covid_imaging.compute import dask_client  # noqa: PLC0415

        return dask_client(replace(config, scheduler_address="local")), False

    @staticmethod
    def _share_memory_datasets(pipeline, catalog, run: str) -> list[_DaskDataset]:
        shared = [_DaskDataset(name, run) for name in memory_datasets_between_nodes(pipeline, catalog)]
        for dataset in shared:
            catalog[dataset.name] = dataset
        return shared

    def _run(self, pipeline, catalog, hook_manager=None, run_id: str | None = None) -> None:
        client, owned = self._client(catalog)
        try:
            self._run_on(client, pipeline, catalog, run_id)
        finally:
            if owned:
                client.close()

    def _run_on(self, client, pipeline, catalog, run_id: str | None) -> None:
        from distributed import as_completed  # noqa: PLC0415

        _check_workers_see_the_project(client)
        shared = self._share_memory_datasets(pipeline, catalog, run_id or uuid.uuid4().hex)
        environment = {RUNS_ENV: os.environ[RUNS_ENV]} if RUNS_ENV in os.environ else {}
        nodes = pipeline.nodes
        load_counts = Counter(chain.from_iterable(node.inputs for node in nodes))
        futures = {}
        for node in nodes:  # topological order: every dependency is submitted first
            dependencies = [futures[dependency] for dependency in pipeline.node_dependencies[node]]
            futures[node] = client.submit(
                _run_node_on_worker, node, catalog, self._is_async, run_id, environment, *dependencies,
                key=f"kedro-node-{node.name}-{run_id or os.getpid()}", pure=False,
            )
        by_name = {node.name: node for node in nodes}
        done = 0
        try:
            for _, name in as_completed(list(futures.values()), with_results=True):
                done += 1
                node = by_name[name]
                self._logger.info("Completed node: %s", node.name)
                self._logger.info("Completed %d out of %d tasks", done, len(nodes))
                self._release_datasets(node, catalog, load_counts, pipeline)
        except Exception:
            for future in futures.values():
                future.cancel()
            raise
        finally:  # nothing of this run stays in the scheduler's memory
            for dataset in shared:
                dataset.release()
