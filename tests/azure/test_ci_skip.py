"""Without Node/Azurite the Azure tests skip with the reason, but fail under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from covid_imaging.azure.azurite import missing_reason

ROOT = Path(__file__).resolve().parents[2]


def _run_without_node(ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(Path(sys.executable).parent)  # the venv: python, but no node
    env.pop("AZURITE_BLOB_BIN", None)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::UserWarning",
            "tests/azure/test_outputs.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_node_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert "Node.js is not on PATH" in (missing_reason() or "")


@pytest.mark.slow
def test_fixture_skips_locally_and_fails_under_ci() -> None:
    local = _run_without_node(ci=False)
    assert (
        local.returncode == 0
        and "SKIPPED" in local.stdout
        and "Node.js is not on PATH" in local.stdout
    )
    ci = _run_without_node(ci=True)
    assert (
        ci.returncode != 0
        and "CI is set but the Azure tests cannot run: Node.js is not on PATH" in ci.stdout
    )
