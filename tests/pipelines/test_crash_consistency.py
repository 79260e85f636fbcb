"""SIGKILL a real data-preparation run at seeded random moments: the state stays consistent.

After every kill, every file named by the tables on disk exists and the preprocessed
folder is complete (byte for byte a clean run's); a re-run then gives exactly a clean
run's outputs and leaves no temporary file or side folder behind.

Start-up of a Kedro run costs ~15 s here (the pipeline registry imports TensorFlow), so
the runs are forked from one server process that imported everything once: each run is
a separate OS process executing ``KedroSession.run(pipeline_names=["data_preparation"])``
(what ``kedro run --pipeline=data_preparation`` does), and it is that process which is
killed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from covid_imaging.datasets.atomic import _HOST_TAG

SEED = 20261201
KILLS_ANYWHERE = 2  # uniformly from the start of the run to (nearly) the swap of the images
KILLS_WHILE_SAVING_IMAGES = 2  # uniformly over the save of the preprocessed folder
TINY_DEMO = {
    "demo_data": {"generator": {"n_per_class": 6, "n_ct_per_class": 4, "cxr_size": 96, "ct_size": 96}},
}
PREPROCESSED = "data/04_feature/synthetic_demo/preprocessed"
TABLES = tuple(f"data/{stage}/synthetic_demo/{name}.csv" for stage, name in (
    ("02_intermediate", "manifest"), ("03_primary", "split_table"), ("05_model_input", "model_input_table")))
PATH_COLUMNS = ("image_uri", "mask_uri", "image_path", "mask_path")

SERVER = r"""
import json, os, signal, sys, traceback
from pathlib import Path
project, params = Path(sys.argv[1]), json.loads(sys.argv[2])
proto = os.fdopen(os.dup(1), "w", buffering=1)  # replies to the test; logs go to stderr
os.dup2(2, 1)
os.chdir(project)
from kedro.framework.startup import bootstrap_project
bootstrap_project(project)
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
pipelines["data_preparation"]  # imports every pipeline module (and TensorFlow) once
with KedroSession.create(project_path=project) as session:  # kedro-mlflow's set-up (5 s) and mlflow.db
    session.load_context()
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
for engine in SqlAlchemyStore._engine_map.values():  # no database connection shared with the runs
    engine.dispose()
SqlAlchemyStore._engine_map.clear()
print("ready", file=proto)
while line := sys.stdin.readline():
    log = project / f"{line.strip()}.log"
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1); os.dup2(fd, 2)
            with KedroSession.create(project_path=project, runtime_params=params) as session:
                session.run(pipeline_names=["data_preparation"])
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    print("started", pid, file=proto)
    if sys.stdin.readline().strip() in ("kill", ""):  # not reaped yet: the pid is still this child's
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    print("exited", status, file=proto)
"""


def _staging_exists(project: Path, pid: int | None = None) -> bool:
    """Whether a run (``pid``, else any) is writing the preprocessed folder aside."""
    parent = (project / PREPROCESSED).parent
    prefix = f".preprocessed.swap-{_HOST_TAG}-{pid}-" if pid else ".preprocessed.swap-"
    return parent.exists() and any(name.startswith(prefix) for name in os.listdir(parent))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(project: Path) -> list[str]:
    """Temporaries of atomic writes and side folders of swaps anywhere under data/."""
    return sorted(
        str(p.relative_to(project)) for p in (project / "data").rglob("*") if p.name.endswith(".tmp") or ".swap-" in p.name or ".old-" in p.name
    )


def _assert_tables_point_at_existing_files(project: Path) -> int:
    checked = 0
    for table_path in TABLES:
        if not (project / table_path).exists():
            continue
        table = pd.read_csv(project / table_path, keep_default_na=False)
        for column in PATH_COLUMNS:
            for path in table.get(column, pd.Series(dtype=str)):
                if path:
                    assert (project / path).is_file(), f"{table_path} names {path}, which does not exist"
                    checked += 1
    return checked


class _Runs:
    """Talks to the fork server: start a run, optionally kill it, wait for its end."""

    def __init__(self, project: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.project = project
        with open(project / "server.log", "wb") as log:
            self.server = subprocess.Popen(
                [sys.executable, "-c", SERVER, str(project), json.dumps(TINY_DEMO)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=project, env=env,
            )
        assert self._read() == ["ready"]

    def _read(self) -> list[str]:
        line = self.server.stdout.readline()
        assert line, "the run server died: " + (self.project / "server.log").read_text()[-3000:]
        return line.split()

    def start(self, name: str) -> int:
        self.server.stdin.write(name + "\n")
        self.server.stdin.flush()
        word, pid = self._read()
        assert word == "started"
        return int(pid)

    def wait(self, kill: bool = False) -> int:
        """Kill the run first when ``kill``; return its wait status."""
        self.server.stdin.write("kill\n" if kill else "wait\n")
        self.server.stdin.flush()
        word, status = self._read()
        assert word == "exited"
        return int(status)

    def close(self) -> None:
        """End the server; a run still in flight is killed (end of input means kill)."""
        try:
            self.server.stdin.close()
            self.server.wait(timeout=30)
        finally:
            if self.server.poll() is None:
                self.server.kill()
                self.server.wait()


def test_the_model_input_table_is_built_only_from_the_saved_preprocessed_folder():
    """The table node reads the folder dataset, so it runs (and is written) after the swap."""
    from covid_imaging.pipelines.preprocessing import create_pipeline

    pipeline = create_pipeline()
    (writer,) = [n for n in pipeline.nodes if "preprocessed_images" in n.outputs]
    (table,) = [n for n in pipeline.nodes if "model_input_table" in n.outputs]
    assert "preprocessed_images" in table.inputs
    assert pipeline.nodes.index(writer) < pipeline.nodes.index(table)  # topological order


@pytest.mark.slow
def test_killed_runs_leave_consistent_state_and_a_rerun_equals_a_clean_run(kedro_project):
    project, rng = kedro_project, random.Random(SEED)
    runs = _Runs(project)
    try:
        # Clean run: its outputs, its duration and when the preprocessed folder is saved.
        started = time.monotonic()
        runs.start("clean")
        saving = []
        while not (project / TABLES[-1]).exists() and time.monotonic() - started < 300:
            if _staging_exists(project):
                saving.append(time.monotonic() - started)
            time.sleep(0.002)
        assert not _staging_exists(project), "model_input_table.csv was written before the folder was swapped in"
        assert runs.wait() == 0, (project / "clean.log").read_text()[-3000:]
        duration = time.monotonic() - started
        assert saving, "the preprocessed folder was not written aside"
        save_window = max(saving[-1] - saving[0], 0.05)
        clean_tables = {path: (project / path).read_bytes() for path in TABLES}
        clean_images = _tree(project / PREPROCESSED)
        assert len(clean_images) > 50 and _leftovers(project) == []
        print(f"clean run {duration:.1f} s, images saved over {save_window:.2f} s", flush=True)

        moments = [("anywhere", rng.uniform(0, 0.8 * saving[-1])) for _ in range(KILLS_ANYWHERE)]  # up to the swap
        moments += [("saving images", rng.uniform(0, save_window)) for _ in range(KILLS_WHILE_SAVING_IMAGES)]
        rng.shuffle(moments)
        killed = []
        for number, (when, delay) in enumerate(moments):
            pid = runs.start(f"killed{number}")
            t0 = time.monotonic()
            if when == "saving images":
                while not _staging_exists(project, pid) and time.monotonic() - t0 < 3 * duration:
                    time.sleep(0.001)
                t0 = time.monotonic()
            time.sleep(max(0.0, delay - (time.monotonic() - t0)))
            status = runs.wait(kill=True)
            if os.WIFSIGNALED(status):
                killed.append((when, round(delay, 3), _leftovers(project)))
            print(f"[{time.monotonic() - started:.1f} s] run {number}: {when} +{delay:.3f} s, killed={os.WIFSIGNALED(status)}", flush=True)
            # The state a reader (a model pipeline, a user) finds after the kill:
            assert _assert_tables_point_at_existing_files(project) > 0
            assert _tree(project / PREPROCESSED) == clean_images  # the previous complete folder
            assert {path: (project / path).read_bytes() for path in TABLES} == clean_tables
        assert len(killed) >= KILLS_ANYWHERE + KILLS_WHILE_SAVING_IMAGES - 1, killed
        assert any(".preprocessed.swap-" in " ".join(left) for _, _, left in killed), (
            f"no kill landed while the preprocessed folder was being written: {killed}"
        )

        assert runs.start("rerun") and runs.wait() == 0, (project / "rerun.log").read_text()[-3000:]
        assert {path: (project / path).read_bytes() for path in TABLES} == clean_tables
        assert _tree(project / PREPROCESSED) == clean_images
        assert _leftovers(project) == []
        print(f"clean run {duration:.1f} s, save window {save_window:.2f} s, kills (moment, delay s, leftovers): {killed}")
    finally:
        runs.close()
