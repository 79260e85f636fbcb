"""Augmentation: same geometry for image and mask, binary masks, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from covid_imaging.segmentation.augmentation import (
    GEOMETRIC_OPS,
    INTENSITY_OPS,
    augment_image_and_mask,
)

OFF = {name: {"probability": 0.0} for name in GEOMETRIC_OPS + INTENSITY_OPS}
GEOMETRY_ONLY = {
    **OFF,
    "scale": {"probability": 1.0},
    "rotation": {"probability": 1.0, "range": [-45.0, 45.0]},
    "shear": {"probability": 1.0},
}
EVERYTHING = {name: {"probability": 1.0} for name in GEOMETRIC_OPS + INTENSITY_OPS}


def _shape_mask(size: int = 48) -> np.ndarray:
    """An asymmetric binary pattern: a big off-centre rectangle and a small square."""
    mask = np.zeros((size, size, 1), np.float32)
    mask[8:30, 6:20] = 1.0
    mask[34:40, 30:42] = 1.0
    return mask


def _seed(a: int, b: int = 0) -> tf.Tensor:
    return tf.constant([a, b], tf.int64)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_image_and_mask_get_the_same_geometry(seed: int) -> None:
    mask = _shape_mask()
    image, augmented_mask = augment_image_and_mask(mask.copy(), mask, _seed(seed), GEOMETRY_ONLY)
    image, augmented_mask = image.numpy(), augmented_mask.numpy()
    assert not np.array_equal(augmented_mask, mask), "the geometry was not changed"
    # Bilinear (image) and nearest (mask) only disagree along the outline.
    disagreement = np.mean((image > 0.5) != (augmented_mask > 0.5))
    assert disagreement < 0.01  # mismatched transforms give 0.05-0.25 here
    overlap = np.logical_and(image > 0.5, augmented_mask > 0.5).sum()
    assert overlap / np.logical_or(image > 0.5, augmented_mask > 0.5).sum() > 0.85


def test_rotation_by_90_degrees_is_counter_clockwise_about_the_centre() -> None:
    mask = _shape_mask(16)
    params = {**OFF, "rotation": {"probability": 1.0, "range": [90.0, 90.0]}}
    image, augmented_mask = augment_image_and_mask(mask, mask, _seed(0), params)
    expected = np.rot90(mask)
    np.testing.assert_array_equal(augmented_mask.numpy(), expected)
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-5)


def test_mask_stays_binary_and_image_in_unit_range_with_every_op() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 1)).astype(np.float32)
    mask = _shape_mask(32)
    for seed in range(5):
        out_image, out_mask = augment_image_and_mask(image, mask, _seed(seed), EVERYTHING)
        assert out_image.shape == image.shape and out_image.dtype == tf.float32
        assert set(np.unique(out_mask.numpy())) <= {0.0, 1.0}
        assert out_image.numpy().min() >= 0.0 and out_image.numpy().max() <= 1.0


def test_intensity_ops_leave_the_mask_untouched() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((32, 32, 1)).astype(np.float32)
    mask = _shape_mask(32)
    params = {**OFF, **{name: {"probability": 1.0} for name in INTENSITY_OPS}}
    out_image, out_mask = augment_image_and_mask(image, mask, _seed(7), params)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    assert not np.allclose(out_image.numpy(), image)


def test_gamma_is_applied_as_a_power() -> None:
    image = np.full((8, 8, 1), 0.5, np.float32)
    params = {**OFF, "gamma": {"probability": 1.0, "range": [2.0, 2.0]}}
    out_image, _ = augment_image_and_mask(image, np.zeros_like(image), _seed(0), params)
    np.testing.assert_allclose(out_image.numpy(), 0.25, atol=1e-6)


def test_same_seed_same_result_and_different_seed_different_result() -> None:
    rng = np.random.default_rng(2)
    image = rng.random((32, 32, 1)).astype(np.float32)
    mask = _shape_mask(32)
    first = augment_image_and_mask(image, mask, _seed(11, 3), EVERYTHING)
    again = augment_image_and_mask(image, mask, _seed(11, 3), EVERYTHING)
    other = augment_image_and_mask(image, mask, _seed(12, 3), EVERYTHING)
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())
    np.testing.assert_array_equal(first[1].numpy(), again[1].numpy())
    assert not np.allclose(first[0].numpy(), other[0].numpy())


def test_zero_probabilities_are_the_identity() -> None:
    rng = np.random.default_rng(3)
    image = rng.random((16, 16, 1)).astype(np.float32)
    mask = _shape_mask(16)
    out_image, out_mask = augment_image_and_mask(image, mask, _seed(5), OFF)
    np.testing.assert_allclose(out_image.numpy(), image, atol=1e-6)
    np.testing.assert_array_equal(out_mask.numpy(), mask)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"flip": {"probability": 0.5}}, "Unknown augmentation parameter 'flip'"),
        ({"rotation": {"probability": 1.5}}, "probability must be in"),
        ({"scale": {"range": [1.1, 0.8]}}, "must be \\[low, high\\]"),
        ({"gamma": {"range": [0.0, 2.0]}}, "must be positive"),
    ],
)
def test_invalid_parameters_are_rejected(params: dict, message: str) -> None:
    image = np.zeros((8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=message):
        augment_image_and_mask(image, image, _seed(0), params)
