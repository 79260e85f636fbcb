"""One resize from an 8-bit image to a network input, wherever a model runs."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np

from covid_imaging.inference.engine import _segment
from covid_imaging.segmentation.data import load_image
from tests.conftest import write_png


class _Identity:
    """Stands in for a segmentation model: returns the batch it is given."""

    input_shape = (None, 64, 64, 1)

    def predict_on_batch(self, batch):
        return batch


def test_inference_feeds_the_segmentation_model_the_pixels_it_was_trained_on(tmp_path):
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (256, 256), dtype=np.uint8), (0, 0), 2)
    image[::7] = 255  # thin lines: a resize that skips pixels (no anti-aliasing) differs here
    path = write_png(tmp_path / "x.png", image)
    trained_on = load_image(str(path), 64).numpy()
    inferred_on = _segment(None, np.stack([image]), SimpleNamespace(model=_Identity()))[0]
    np.testing.assert_allclose(inferred_on, trained_on, atol=1e-6)
    area = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255.0
    assert np.abs(area - trained_on).max() > 2 / 255  # the resize used before differs
