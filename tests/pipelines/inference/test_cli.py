"""`covid-imaging predict IN_DIR OUT_DIR` runs the inference pipeline."""

from __future__ import annotations

import pandas as pd
import pytest

from covid_imaging.predict import predict
from tests.inference.helpers import OLD_VERSION, write_images

pytestmark = pytest.mark.slow


def test_predict_command(inference_project, tmp_path, capsys, monkeypatch):
    """The console script from another folder: relative IN_DIR / OUT_DIR are the user's,
    the models are found in the project, the new run folder is printed, and it exits 0."""
    import sys
    from pathlib import Path

    from covid_imaging.__main__ import main

    monkeypatch.chdir(tmp_path)
    sizes = write_images(tmp_path / "in")
    (tmp_path / "out" / "zzz").mkdir(parents=True)  # a folder that is not this run's
    monkeypatch.setattr(sys, "argv", [
        "covid-imaging", "predict", "in", "out", "--project", str(inference_project), "--classifiers", "",
        "--params", f"preprocessing.resize.size=64,inference.versions.segmentation.unet={OLD_VERSION}"])
    assert main() == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert run.parent == tmp_path / "out" and run.name != "zzz"
    predictions = pd.read_csv(run / "predictions.csv")
    assert sorted(predictions["image_id"]) == sorted(sizes)
    assert not any(column.startswith("simple_cnn") for column in predictions.columns)
    assert (run / "report.html").exists()


def test_not_a_project(tmp_path):
    with pytest.raises(SystemExit, match="not the covid-imaging project"):
        predict([str(tmp_path), str(tmp_path / "out"), "--project", str(tmp_path)])
