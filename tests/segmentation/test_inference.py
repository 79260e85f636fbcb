"""Native-size scoring: the probability map goes back through the padding to the original mask."""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from covid_imaging.imaging.io import encode_png
from covid_imaging.imaging.preprocessing import resize_mask
from covid_imaging.segmentation.inference import score_images


def _lungs(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (width // 3, height // 2), (width // 8, height // 3), 0, 0, 360, 255, -1)
    cv2.ellipse(mask, (2 * width // 3, height // 2), (width // 9, height // 3), 0, 0, 360, 255, -1)
    return mask


@pytest.mark.parametrize("shape", [(300, 180), (160, 400)])
def test_a_perfect_prediction_scores_one_at_native_size_only_through_the_right_geometry(tmp_path, shape):
    height, width = shape
    native_mask = _lungs(height, width)
    square = resize_mask(native_mask, 128, mode="pad")  # what preprocessing wrote
    path = tmp_path / "case.png"
    path.write_bytes(encode_png(square))
    rows = pd.DataFrame(
        [{"image_id": "case", "source": "s", "mask_convention": "nlm", "image_path": str(path), "mask_path": str(path),
          "mask_key": "masks/case.png", "height": height, "width": width}]
    )
    raw_files = {"masks/case.png": lambda: encode_png(native_mask)}
    # a "model" that returns its input: on a mask image it predicts the mask exactly
    identity = keras.Sequential([keras.Input((64, 64, 1)), keras.layers.Identity()])
    data = {"image_size": 64, "batch_size": 1}
    postprocessing = {"local_threshold": {"enabled": False}}
    padded, _ = score_images(identity, rows, data, postprocessing, {"resize": {"size": 128, "mode": "pad"}}, raw_files)
    squashed, _ = score_images(identity, rows, data, postprocessing, {"resize": {"size": 128, "mode": "stretch"}}, raw_files)
    assert padded.loc[0, "dice_native_post"] > 0.95
    assert padded.loc[0, "area_ratio_native_post"] == pytest.approx(1.0, abs=0.06)
    # undoing the wrong geometry misplaces the lungs: the native score must show it
    assert squashed.loc[0, "dice_native_post"] < padded.loc[0, "dice_native_post"] - 0.1
    assert padded.loc[0, "dice_post"] > 0.95  # at model size nothing had to be undone


def test_a_mask_of_zeros_and_ones_is_the_lung_at_native_size():
    """Ingestion accepts 0/1 masks (8- or 16-bit): native-size scoring must see their lung."""
    from covid_imaging.segmentation.inference import load_native_mask

    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 5:25] = 1
    for stored in (mask, mask.astype(np.uint16)):
        ok, png = cv2.imencode(".png", stored)
        assert ok
        loaded = load_native_mask(lambda png=png: png.tobytes(), 40, 60)
        assert loaded.sum() == 400 and loaded[10:30, 5:25].all()
    assert load_native_mask(lambda: encode_png(mask * 255), 80, 120).sum() == 1600  # resized to the image


def test_native_masks_use_the_preprocessing_defaults_for_what_is_not_given():
    """A preprocessing block without resize.mode pads (the preprocessing default), so the
    native mask is restored the way the input was made, not squashed."""
    from covid_imaging.segmentation.inference import native_lung_mask

    probability = np.zeros((64, 64), np.float32)
    probability[20:44, 10:54] = 1.0
    post = {"local_threshold": {"enabled": False}}
    default, _ = native_lung_mask(probability, 50, 100, {"resize": {"size": 64}}, post)
    padded, _ = native_lung_mask(probability, 50, 100, {"resize": {"size": 64, "mode": "pad"}}, post)
    stretched, _ = native_lung_mask(probability, 50, 100, {"resize": {"size": 64, "mode": "stretch"}}, post)
    np.testing.assert_array_equal(default, padded)
    assert not np.array_equal(default, stretched)
