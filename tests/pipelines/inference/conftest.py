"""A throw-away project with tiny trained-model stand-ins in its catalog folders."""

from __future__ import annotations

import pytest

from tests.inference.helpers import (
    NEW_VERSION,
    OLD_VERSION,
    save_version,
    threshold_model,
    tiny_classifier,
)

TINY_PARAMS = {"preprocessing.resize.size": 64}


@pytest.fixture
def inference_project(kedro_project):
    """Segmentation: an old version that takes bright pixels for lung and a newer one that
    takes dark pixels; one X-ray classifier and one CT classifier."""
    save_version(kedro_project, "segmentation", "unet", OLD_VERSION, threshold_model(bright_is_lung=True))
    save_version(kedro_project, "segmentation", "unet", NEW_VERSION, threshold_model(bright_is_lung=False))
    save_version(kedro_project, "classification", "simple_cnn_scratch", NEW_VERSION, tiny_classifier(3))
    save_version(kedro_project, "ct_classification", "basic_cnn", NEW_VERSION, tiny_classifier(2))
    return kedro_project
