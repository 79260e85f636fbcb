"""Per-image work on all local cores or on a Dask cluster: one ordered, bounded map.

Every per-image stage (ingestion checks, preprocessing, lung masking, scoring of
segmentation predictions, inference's decoding and post-processing) maps a function over its images with :func:`ordered_map`.
The work runs on one of three existing engines, chosen by the ``compute`` parameters
(``conf/base/parameters/compute.yml``):

* ``threads`` (default): a ``concurrent.futures.ThreadPoolExecutor`` on every local
  core. OpenCV, NumPy and zlib release the GIL, so decode → chain → encode scales.
* ``processes``: a ``ProcessPoolExecutor`` (``forkserver``: safe with TensorFlow's
  threads) for Python-heavy functions.
* ``dask``: ``dask.distributed`` when ``compute.dask.scheduler_address`` is set: an
  address (``tcp://scheduler:8786``) or ``local``, which starts a ``LocalCluster`` of
  ``compute.dask.n_workers`` processes on this machine. The workers must reach the
  files the function reads (a shared file system or ``abfs://``).

Items are sent in chunks of ``chunk_size`` (one task each) and at most ``in_flight``
chunks are submitted ahead of the consumer, so memory is bounded by
``chunk_size x in_flight`` results, not by the data set. Results come back in input
order whatever the backend, so outputs are identical.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from itertools import islice
from typing import Any, TypeVar

from covid_imaging.progress import log_progress
from covid_imaging.segmentation._params import merge_params

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

BACKENDS = ("threads", "processes", "serial")
DEFAULT_COMPUTE_PARAMS: dict[str, Any] = {
    "backend": "threads",  # threads | processes | serial; ignored when dask.scheduler_address is set
    "n_workers": None,  # null: every core this process may use
    "chunk_size": 16,  # items per task
    "in_flight": None,  # chunks submitted ahead of the consumer; null: 2 per worker
    "dask": {
        "scheduler_address": None,  # null (local backends), "local" (a LocalCluster) or an address
        "n_workers": 2,  # LocalCluster processes (scheduler_address: local)
        "threads_per_worker": 1,
        "connect_timeout_s": 30,  # waiting for a remote scheduler
    },
}


def local_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be a positive integer; got {value!r}")
    return value


@dataclass(frozen=True)
class ComputeConfig:
    """Typed view of the ``compute`` parameters block (see the module docstring)."""

    backend: str = "threads"
    n_workers: int | None = None
    chunk_size: int = 16
    in_flight: int | None = None
    scheduler_address: str | None = None
    dask_n_workers: int = 2
    dask_threads_per_worker: int = 1
    dask_connect_timeout_s: float = 30.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> ComputeConfig:
        """From the YAML block; unknown keys and impossible values raise ``ValueError``."""
        if isinstance(params, ComputeConfig):
            return params
        resolved = merge_params(DEFAULT_COMPUTE_PARAMS, params, where="compute")
        if resolved["backend"] not in BACKENDS:
            raise ValueError(f"compute.backend must be one of {BACKENDS}; got {resolved['backend']!r}")
        dask = resolved["dask"]
        address = dask["scheduler_address"]
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"compute.dask.scheduler_address must be null, 'local' or an address; got {address!r}")
        return cls(
            backend=resolved["backend"],
            n_workers=None if resolved["n_workers"] is None else _positive_int(resolved["n_workers"], "compute.n_workers"),
            chunk_size=_positive_int(resolved["chunk_size"], "compute.chunk_size"),
            in_flight=None if resolved["in_flight"] is None else _positive_int(resolved["in_flight"], "compute.in_flight"),
            scheduler_address=address.strip() if address else None,
            dask_n_workers=_positive_int(dask["n_workers"], "compute.dask.n_workers"),
            dask_threads_per_worker=_positive_int(dask["threads_per_worker"], "compute.dask.threads_per_worker"),
            dask_connect_timeout_s=float(dask["connect_timeout_s"]),
        )

    @property
    def uses_dask(self) -> bool:
        return self.scheduler_address is not None

    @property
    def workers(self) -> int:
        """Local workers (threads or processes) for the local backends."""
        return self.n_workers or local_cores()

    def describe(self) -> str:
        if self.uses_dask:
            return f"dask at {self.scheduler_address}"
        if self.backend == "serial":
            return "serial (this thread)"
        return f"{self.workers} {self.backend}"


# ---------------------------------------------------------------------------- dask clients

_clients: dict[tuple[str, int, int], Any] = {}
_clients_lock = threading.Lock()


def dask_client(config: ComputeConfig):
    """The ``distributed.Client`` for ``config``, created once per process and reused.

    ``local`` starts a ``LocalCluster`` (worker processes, closed at exit); any other
    value is the address of a running scheduler.
    """
    from distributed import Client, LocalCluster  # noqa: PLC0415 - only with the dask backend

    key = (str(config.scheduler_address), config.dask_n_workers, config.dask_threads_per_worker)
    with _clients_lock:
        client = _clients.get(key)
        if client is not None and client.status == "running":
            return client
        if config.scheduler_address == "local":
            cluster = LocalCluster(
                n_workers=config.dask_n_workers,
                threads_per_worker=config.dask_threads_per_worker,
                processes=True,
                dashboard_address=None,  # no web server in pipelines and tests
            )
            client = Client(cluster)
            logger.info("Started a Dask LocalCluster with %d workers", config.dask_n_workers)
        else:
            try:
                client = Client(config.scheduler_address, timeout=config.dask_connect_timeout_s)
            except OSError as error:
                raise ConnectionError(
                    f"compute.dask.scheduler_address: cannot reach the Dask scheduler at "
                    f"{config.scheduler_address!r} ({error})"
                ) from error
        _clients[key] = client
        return client


def close_dask_clients() -> None:
    """Close every client (and LocalCluster) this process started."""
    with _clients_lock:
        for client in _clients.values():
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()
        _clients.clear()


atexit.register(close_dask_clients)


# ---------------------------------------------------------------------------- the map


def _apply_chunk(function: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [function(item) for item in chunk]


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def inside_dask_worker() -> bool:
    """True in a task running on a Dask worker (e.g. a node run by the Dask runner)."""
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker  # noqa: PLC0415

    try:
        get_worker()
    except ValueError:
        return False
    return True


def _executor(config: ComputeConfig) -> tuple[Executor, bool, int]:
    """``(executor, owned, parallelism)``; owned executors are shut down after the map.

    Inside a Dask worker the map runs on the local backend, in that worker's process
    (``compute.n_workers`` threads or processes; default every core the process may
    use): the worker already is the cluster's unit of work, and a LocalCluster cannot
    start inside it. A daemonic process (a Dask worker by default) cannot start
    processes either: ``processes`` becomes threads there.
    """
    if config.uses_dask and not inside_dask_worker():
        client = dask_client(config)
        n_threads = sum(client.nthreads().values()) or config.dask_n_workers
        return client.get_executor(pure=False), False, n_threads
    if config.backend == "processes" and not multiprocessing.current_process().daemon:
        context = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
        return ProcessPoolExecutor(max_workers=config.workers, mp_context=context), True, config.workers
    return ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="compute"), True, config.workers


def _log_to_stderr(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def call_in_fresh_process(function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """``function(*args, **kwargs)`` in a new process that ends with the call (``forkserver``,
    as the ``processes`` backend), its result returned and its exception re-raised here.

    Why: TensorFlow keeps about a gigabyte of memory for every deep network built in a
    process, even once no model is left alive (README, "Scaling out"); a job that trains
    dozens of networks in one process would outgrow the machine. ``function`` and its
    arguments must be picklable; the child logs this process's log level to stderr.
    """
    if multiprocessing.current_process().daemon:
        # A daemonic process (a Dask worker) may not start children: the call stays here.
        logger.warning("%s runs in this process: a daemonic process (a Dask worker) cannot start a fresh one",
                       getattr(function, "__name__", function))
        return function(*args, **kwargs)
    context = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    level = logging.getLogger().getEffectiveLevel()
    with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_log_to_stderr,
                             initargs=(level,)) as executor:
        return executor.submit(function, *args, **kwargs).result()


def ordered_map(
    function: Callable[[T], R], items: Iterable[T], config: ComputeConfig | Mapping[str, Any] | None = None
) -> Iterator[R]:
    """``map(function, items)`` on the configured backend, lazily, in input order.

    ``function`` must be picklable for the ``processes`` and ``dask`` backends (a
    module-level function or a ``functools.partial`` of one). ``items`` is consumed
    only as far as needed to keep ``in_flight`` chunks busy. An exception raised by
    ``function`` is re-raised here when its item's turn comes; the chunks not yet
    started are cancelled when the consumer stops early.
    """
    config = ComputeConfig.from_params(config) if not isinstance(config, ComputeConfig) else config
    if config.backend == "serial" and (not config.uses_dask or inside_dask_worker()):
        yield from map(function, items)  # one item at a time, in this thread
        return
    executor, owned, parallelism = _executor(config)
    window = config.in_flight or 2 * parallelism
    pending: deque[Future] = deque()
    try:
        for chunk in _chunks(items, config.chunk_size):
            pending.append(executor.submit(_apply_chunk, function, chunk))
            if len(pending) >= window:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        if owned:
            executor.shutdown(wait=True, cancel_futures=True)


def _captured(function: Callable[[T], R], item: T) -> tuple[bool, Any]:
    # An item's error is raised when that item is asked for, not when a later one is.
    try:
        return True, function(item)
    except Exception as error:  # noqa: BLE001 - re-raised by _unwrap
        return False, error


def _unwrap(outcome: tuple[bool, Any]) -> Any:
    ok, value = outcome
    if ok:
        return value
    raise value


class LazyResults(Mapping[str, Callable[[], R]]):
    """``{key: callable}`` whose values are computed in parallel, ahead of the caller.

    For nodes whose output is saved lazily by a ``PartitionedDataset``: the dataset
    calls the values one by one in sorted key order, and each call returns a result that
    :func:`ordered_map` has computed in the background, so the saving thread writes
    while the workers compute the next images. Memory stays bounded by the map's
    window. Values called out of order are computed directly (correct, not parallel).
    """

    def __init__(self, function: Callable[[T], R], items: Mapping[str, T], config: ComputeConfig,
                 what: str | None = None) -> None:
        if config.uses_dask and inside_dask_worker():
            # Decided here, in the node's own task thread: the map starts in whichever
            # thread asks first (a catalog writer), where Dask's worker context is not
            # visible and a LocalCluster would be started inside the worker.
            config = replace(config, scheduler_address=None)
        self._function, self._items, self._config, self._what = function, dict(items), config, what
        self._results: Iterator[tuple[str, R]] | None = None
        self._ready: dict[str, R] = {}
        self._lock = threading.Lock()

    def __getitem__(self, key: str) -> Callable[[], R]:
        if key not in self._items:
            raise KeyError(key)
        return _LazyValue(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def result(self, key: str) -> R:
        with self._lock:
            if key in self._ready:
                return _unwrap(self._ready.pop(key))
            if self._results is None:
                keys = sorted(self._items)
                values = ordered_map(partial(_captured, self._function), (self._items[k] for k in keys), self._config)
                if self._what:  # a log line with an ETA at each tenth of the outputs
                    values = log_progress(values, len(keys), self._what)
                self._results = zip(keys, values, strict=True)
            for produced, outcome in self._results:
                if produced == key:
                    return _unwrap(outcome)
                self._ready[produced] = outcome  # called out of order: keep until asked for
        return self._function(self._items[key])  # asked again, or after the map ended

    def __reduce__(self):  # crossing processes: send the work, not the running map
        return (LazyResults, (self._function, self._items, self._config, self._what))


class _LazyValue:
    __slots__ = ("_owner", "_key")

    def __init__(self, owner: LazyResults, key: str) -> None:
        self._owner, self._key = owner, key

    def __call__(self):
        return self._owner.result(self._key)

    def __repr__(self) -> str:
        return f"<lazy result {self._key!r}>"
