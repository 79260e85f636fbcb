"""The per-image map: same results in the same order on every backend, bounded, strict
params; a call in a fresh process."""

from __future__ import annotations

import os
import time
from functools import partial

import pytest

from covid_imaging.compute import (
    ComputeConfig,
    LazyResults,
    call_in_fresh_process,
    close_dask_clients,
    local_cores,
    ordered_map,
)


def _square_after(delay: float, value: int) -> int:
    time.sleep(delay * (value % 3))  # later items often finish first
    return value * value


def _fail_on(bad: int, value: int) -> int:
    if value == bad:
        raise ValueError(f"item {value} is bad")
    return value


def test_unknown_and_impossible_parameters_fail():
    with pytest.raises(ValueError, match="Unknown compute parameter 'workers'"):
        ComputeConfig.from_params({"workers": 4})
    with pytest.raises(ValueError, match=r"Unknown compute.dask parameter 'address'"):
        ComputeConfig.from_params({"dask": {"address": "tcp://x:8786"}})
    with pytest.raises(ValueError, match="compute.backend must be one of"):
        ComputeConfig.from_params({"backend": "gpu"})
    with pytest.raises(ValueError, match="compute.chunk_size must be a positive integer"):
        ComputeConfig.from_params({"chunk_size": 0})
    with pytest.raises(ValueError, match="compute.dask.n_workers must be a positive integer"):
        ComputeConfig.from_params({"dask": {"scheduler_address": "local", "n_workers": 0}})


def test_defaults_use_every_local_core():
    config = ComputeConfig.from_params(None)
    assert config.backend == "threads" and not config.uses_dask
    assert config.workers == local_cores() >= 1
    assert ComputeConfig.from_params({"dask": {"scheduler_address": "local"}}).uses_dask


@pytest.mark.parametrize("backend", ["serial", "threads", "processes"])
def test_results_are_in_input_order_on_every_local_backend(backend):
    items = list(range(37))
    config = {"backend": backend, "n_workers": 2, "chunk_size": 4}
    assert list(ordered_map(partial(_square_after, 0.002), items, config)) == [i * i for i in items]


def test_an_error_is_raised_at_its_item():
    results = ordered_map(partial(_fail_on, 5), range(10), {"n_workers": 2, "chunk_size": 2})
    assert [next(results) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="item 5 is bad"):
        list(results)


def test_items_are_consumed_only_a_window_ahead():
    """Memory is bounded by chunk_size x in_flight items, not by the input."""
    taken = []

    def source():
        for i in range(1000):
            taken.append(i)
            yield i

    results = ordered_map(partial(_square_after, 0.0), source(), {"n_workers": 2, "chunk_size": 5, "in_flight": 3})
    assert next(results) == 0
    assert len(taken) <= 5 * 3 + 5  # the window plus the chunk being read
    results.close()


def test_lazy_results_in_sorted_order_and_out_of_order():
    items = {f"images/{i:03d}": i for i in range(40)}
    lazy = LazyResults(partial(_square_after, 0.001), items, ComputeConfig(n_workers=2, chunk_size=3))
    assert sorted(lazy) == sorted(items) and len(lazy) == 40
    assert lazy["images/017"]() == 17 * 17  # out of order first: earlier results are kept
    assert [value() for _, value in sorted(lazy.items())] == [i * i for i in range(40)]
    assert lazy["images/003"]() == 9  # asked again after the map: computed directly
    with pytest.raises(KeyError):
        lazy["images/999"]


def test_lazy_results_raise_each_error_at_its_own_key():
    lazy = LazyResults(partial(_fail_on, 2), {"a": 1, "b": 2, "c": 3}, ComputeConfig(n_workers=2, chunk_size=1))
    assert lazy["a"]() == 1
    assert lazy["c"]() == 3  # computed after the failing "b", still delivered
    with pytest.raises(ValueError, match="item 2 is bad"):
        lazy["b"]()


def _lazy_squares_read_by_another_thread(n: int) -> list[int]:
    """What a node on a Dask worker does: build lazy results whose compute block names a
    cluster, and let a catalog writer thread (not the task's own) read them."""
    import threading

    config = ComputeConfig.from_params({"chunk_size": 2, "dask": {"scheduler_address": "local", "n_workers": 2}})
    lazy = LazyResults(partial(_square_after, 0.0), {f"k{i:02d}": i for i in range(n)}, config)
    values: list[int] = []
    writer = threading.Thread(target=lambda: values.extend(lazy[key]() for key in sorted(lazy)))
    writer.start()
    writer.join()
    return values


@pytest.mark.slow
def test_lazy_results_in_a_dask_worker_use_its_threads_from_any_thread():
    # A worker process cannot start a LocalCluster ("daemonic processes are not allowed
    # to have children"): lazy results made in a node on the Dask runner compute locally.
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert client.submit(_lazy_squares_read_by_another_thread, 7).result(timeout=120) == [i * i for i in range(7)]


def _inside_a_worker() -> tuple[bool, list[int], set[str]]:
    """In a (daemonic) Dask worker: a fresh-process call, the processes backend, the serial backend."""
    import os
    import threading

    from covid_imaging.compute import call_in_fresh_process

    same_process = call_in_fresh_process(os.getpid) == os.getpid()
    squares = list(ordered_map(partial(_square_after, 0.0), range(5), {"backend": "processes", "n_workers": 2}))
    names = set(ordered_map(lambda _: threading.current_thread().name, range(4),
                            {"backend": "serial", "dask": {"scheduler_address": "local"}}))
    return same_process, squares, names


@pytest.mark.slow
def test_process_backends_fall_back_inside_a_daemonic_dask_worker():
    """A Dask worker may not start processes: fresh-process calls and the processes backend
    run in it instead of failing, and serial stays one item at a time in the task's thread."""
    import threading

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        same_process, squares, names = client.submit(_inside_a_worker).result(timeout=120)
    assert same_process and squares == [0, 1, 4, 9, 16]
    assert len(names) == 1 and not next(iter(names)).startswith("compute")
    assert threading.current_thread().name == "MainThread"


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_results():
    config = {"chunk_size": 4, "dask": {"scheduler_address": "local", "n_workers": 2}}
    try:
        assert list(ordered_map(partial(_square_after, 0.001), range(30), config)) == [i * i for i in range(30)]
        with pytest.raises(ValueError, match="item 7 is bad"):
            list(ordered_map(partial(_fail_on, 7), range(30), config))
    finally:
        close_dask_clients()


def test_an_unreachable_scheduler_is_named():
    with pytest.raises(ConnectionError, match="tcp://127.0.0.1:9"):
        list(ordered_map(abs, range(3), {"dask": {"scheduler_address": "tcp://127.0.0.1:9", "connect_timeout_s": 1}}))


def test_a_call_in_a_fresh_process_returns_its_result_and_raises_its_error():
    # os.getpid in the child: another process; its value comes back here.
    assert call_in_fresh_process(os.getpid) != os.getpid()
    assert call_in_fresh_process(divmod, 7, 2) == (3, 1)
    with pytest.raises(ValueError, match="invalid literal for int"):
        call_in_fresh_process(int, "seven")
