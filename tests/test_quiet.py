"""Start-up noise is hidden deliberately (each filter named in covid_imaging.quiet); other warnings still show."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import PROJECT_ROOT


def test_kedro_cli_start_up_shows_no_mlflow_type_hint_warning():
    # kedro-mlflow imports mlflow while Kedro loads project plugins, before settings.py
    result = subprocess.run([sys.executable, "-m", "kedro", "--help"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Add type hints to the `predict` method" not in result.stdout + result.stderr
    assert "run" in result.stdout  # the project's commands are still there


SCRIPT = """
import warnings
from covid_imaging.quiet import install_warning_filters
install_warning_filters()
with warnings.catch_warnings():  # what MLflow does around its type-hint check
    warnings.simplefilter("once", category=UserWarning)
    warnings.warn("\\033[33mAdd type hints to the `predict` method to enable data validation", UserWarning)
    warnings.warn("images folder has 3 unreadable files", UserWarning)
"""


def test_a_hidden_warning_stays_hidden_under_a_local_once_filter_and_others_still_show():
    # a fresh interpreter: pytest records warnings itself, which would bypass Python's showwarning
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")})
    assert result.returncode == 0, result.stderr
    assert "Add type hints" not in result.stderr
    assert "images folder has 3 unreadable files" in result.stderr


LOGGING_SCRIPT = """
import logging, logging.config, yaml
logging.config.dictConfig(yaml.safe_load(open("conf/logging.yml")))
from kedro_viz.integrations.kedro.run_hooks import PipelineRunStatusHook
# what kedro run --pipelines=segmentation hands the hook
PipelineRunStatusHook().before_pipeline_run({"pipeline_names": ["segmentation"], "pipeline_name": "segmentation",
                                             "runner": "SequentialRunner"}, None)
logging.getLogger("kedro_viz.integrations.kedro.hooks_utils").warning("Failed writing events: disk full")
"""


def test_kedro_viz_partial_run_notice_is_hidden_and_its_write_failures_still_show():
    result = subprocess.run([sys.executable, "-c", LOGGING_SCRIPT], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Workflow tracking is disabled" not in result.stdout + result.stderr
    assert "Failed writing events: disk full" in result.stdout
