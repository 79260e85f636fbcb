"""Deliberate silencing of start-up noise that says nothing about this project's run.

Each filter names what it hides and why; everything else is shown.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings

import click

# (message regex, category, why it is hidden)
WARNING_FILTERS: tuple[tuple[str, type[Warning], str], ...] = (
    # Kedro 1.7 and kedro-mlflow 2.0 call OmegaConf's deprecated resolver API themselves.
    (r"register_new_resolver\(\) is deprecated", UserWarning, "kedro/kedro-mlflow internals"),
    # Our namespaced pipelines refer to other namespaces' outputs (segmentation.unet.model)
    # on purpose: that is how the ensemble and the comparison read the models' results.
    (r"One or more dataset names contain '\.'", UserWarning, "deliberate namespaced names"),
    # kedro-mlflow defines a PythonModel without type hints; we never log pyfunc models.
    (r".*Add type hints to the `predict` method", UserWarning, "kedro-mlflow internals"),
)


def _hidden(message: Warning | str, category: type[Warning]) -> bool:
    return any(issubclass(category, hidden) and re.match(pattern, str(message), re.IGNORECASE)
               for pattern, hidden, _why in WARNING_FILTERS)


def install_warning_filters() -> None:
    """Hide the warnings of ``WARNING_FILTERS`` (idempotent).

    Besides the filters, ``warnings.showwarning`` (Python's documented hook) drops them:
    MLflow emits its type-hint warning inside ``catch_warnings`` with its own
    ``simplefilter("once")``, which takes precedence over every filter installed before.
    """
    for message, category, _why in WARNING_FILTERS:
        warnings.filterwarnings("ignore", message=message, category=category)
    shown = warnings.showwarning
    if getattr(shown, "covid_imaging_quiet", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not _hidden(message, category):
            shown(message, category, filename, lineno, file, line)

    showwarning.covid_imaging_quiet = True
    warnings.showwarning = showwarning


# No commands (and no help text, which Kedro's --help would print): Kedro's CLI loads this
# group as a global plugin (``kedro.global_commands``), so importing this module installs
# the filters before project plugins load (kedro-mlflow imports mlflow then, before this
# project's settings.py runs).
kedro_cli_start_up = click.Group(name="covid_imaging_start_up")


install_warning_filters()  # importing this module (the entry point above, or settings.py) is enough


def cpu_only() -> bool:
    """True when the user hid every GPU (``CUDA_VISIBLE_DEVICES=""``), as on the CPU machine."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", None) == ""


@contextlib.contextmanager
def _stderr_silenced():
    """Redirect file descriptor 2 (C++ logging writes there directly, not via Python)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow_quietly() -> None:
    """On a CPU-only run, import TensorFlow without its CUDA probing messages.

    TensorFlow prints "Could not find cuda drivers" (absl, before its log level applies)
    at import and "failed call to cuInit" (an ERROR) at first use, although the user
    asked for no GPU. With ``CUDA_VISIBLE_DEVICES=""`` the import's stderr is dropped and
    ``TF_CPP_MIN_LOG_LEVEL`` is raised to 3 unless set higher; Python errors still raise.
    With a GPU visible nothing changes.
    """
    if "tensorflow" in sys.modules or not cpu_only():
        return
    if int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0) < 3:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with _stderr_silenced():
        import tensorflow  # noqa: F401, PLC0415
