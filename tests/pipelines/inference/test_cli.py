"""`covid-imaging predict IN_DIR OUT_DIR` runs the inference pipeline."""

from __future__ import annotations

import pandas as pd
import pytest

from covid_imaging.predict import predict
from tests.inference.helpers import OLD_VERSION, write_images

pytestmark = pytest.mark.slow


def test_predict_command(inference_project, tmp_path, capsys):
    source, output = tmp_path / "in", tmp_path / "out"
    sizes = write_images(source)
    run = predict([str(source), str(output), "--project", str(inference_project), "--classifiers", "",
                   "--params", f"preprocessing.resize.size=64,inference.versions.segmentation.unet={OLD_VERSION}"])
    assert capsys.readouterr().out.strip().endswith(run.name)
    assert run.parent == output
    predictions = pd.read_csv(run / "predictions.csv")
    assert sorted(predictions["image_id"]) == sorted(sizes)
    assert not any(column.startswith("simple_cnn") for column in predictions.columns)
    assert (run / "report.html").exists()


def test_not_a_project(tmp_path):
    with pytest.raises(SystemExit, match="not the covid-imaging project"):
        predict([str(tmp_path), str(tmp_path / "out"), "--project", str(tmp_path)])
