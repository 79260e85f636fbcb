"""Shared test fixtures: tiny real image files and paths to the curated data."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The curated public data beside the project; tests using it skip when it is absent."""
    if not (SHARED_DATA / "manifest.csv").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (see README, 'Where data goes')")
    return SHARED_DATA


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def chest_like_image(size: tuple[int, int] = (64, 80), seed: int = 0) -> np.ndarray:
    """A small 8-bit gray image with structure (so CLAHE/blur have something to do)."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    image = 120 + 60 * np.sin(xx / 7.0) * np.cos(yy / 9.0) + rng.normal(0, 8, size)
    return np.clip(image, 0, 255).astype(np.uint8)


def lung_mask(size: tuple[int, int] = (64, 80)) -> np.ndarray:
    height, width = size
    mask = np.zeros(size, np.uint8)
    cv2.ellipse(mask, (width // 3, height // 2), (width // 8, height // 3), 0, 0, 360, 255, -1)
    cv2.ellipse(mask, (2 * width // 3, height // 2), (width // 8, height // 3), 0, 0, 360, 255, -1)
    return mask


@pytest.fixture
def kedro_project(tmp_path, monkeypatch):
    """A throw-away copy of the project's configuration, run from its own folder.

    Data, models, reports and mlflow.db land in tmp_path, never in the checkout.
    """
    import shutil

    from kedro.framework.startup import bootstrap_project

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", project)
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("credentials.yml"))
    (project / "src").mkdir()  # Kedro checks it exists; the package itself is installed
    # An absolute tracking URI: MLflow caches stores by URI, so a relative sqlite path
    # would keep pointing at the first test's database within one pytest process.
    mlflow_yml = project / "conf" / "base" / "mlflow.yml"
    mlflow_yml.write_text(mlflow_yml.read_text().replace("sqlite:///mlflow.db", f"sqlite:///{project}/mlflow.db"))
    monkeypatch.chdir(project)
    bootstrap_project(project)
    yield project
    import mlflow
    from kedro_mlflow.framework.hooks.mlflow_hook import mlflow_hook

    while mlflow.active_run() is not None:  # never leak a run into the next test
        mlflow.end_run()
    # kedro-mlflow's hook is a process-wide singleton that keeps the last run id, and
    # reopens it in the next session when that session's pipeline is not tracked.
    mlflow_hook.run_id = None


def tiny_demo_params(n_per_class: int = 6, n_ct_per_class: int = 2) -> dict:
    """A tiny synthetic demo set at 64 px (dotted ``--params`` keys), shared by the pipeline runs."""
    return {
        "demo_data.generator.n_per_class": n_per_class,
        "demo_data.generator.n_ct_per_class": n_ct_per_class,
        "demo_data.generator.cxr_size": 64,
        "demo_data.generator.ct_size": 64,
        "preprocessing.resize.size": 64,
    }


def tiny_segmentation_params(models, epochs: int) -> dict:
    """Segmentation models at 32 px, 4 base filters, batch 4, ``epochs`` epochs."""
    params: dict = {}
    for model in models:
        params |= {
            f"segmentation.{model}.data.image_size": 32,
            f"segmentation.{model}.data.batch_size": 4,
            f"segmentation.{model}.training.epochs": epochs,
            f"segmentation.{model}.model.base_filters": 4,
        }
    return params


def nested_params(dotted: dict) -> dict:
    """Dotted keys (``"segmentation.unet.training.epochs": 2``) nested as the CLI's ``--params`` does."""
    nested: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return nested


def run_kedro(
    project: Path, pipeline: str, env: str | None = None, params: dict | None = None, runner=None,
    namespaces: list[str] | None = None,
) -> dict:
    """Run a pipeline in a fresh session, like `kedro run --pipeline=... --env=... --params=...
    [--namespaces=...]` (``runner``: a Kedro runner instance, e.g. ``ParallelRunner()``)."""
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project, env=env, runtime_params=nested_params(params or {})) as session:
        return session.run(pipeline_names=[pipeline], runner=runner, namespaces=namespaces)
