"""Augmentation: same geometry for image and mask, binary masks, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from covid_imaging.segmentation.augmentation import (
    ALL_OPS,
    INTENSITY_OPS,
    OPACITY_KINDS,
    add_borders,
    augment_image_and_mask,
    opacity_field,
    paste_opacity,
)

OFF = {name: {"probability": 0.0} for name in ALL_OPS}
GEOMETRY_ONLY = {
    **OFF,
    "scale": {"probability": 1.0},
    "aspect": {"probability": 1.0, "range": [0.7, 1.4]},
    "translation": {"probability": 1.0, "range": [-0.1, 0.1]},
    "rotation": {"probability": 1.0, "range": [-45.0, 45.0]},
    "shear": {"probability": 1.0},
}
EVERYTHING = {name: {"probability": 1.0} for name in ALL_OPS}


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


def _lungs(size: int = 64) -> np.ndarray:
    import cv2

    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (size // 3, size // 2), (size // 8, size // 3), 0, 0, 360, 1, -1)
    cv2.ellipse(mask, (2 * size // 3, size // 2), (size // 8, size // 3), 0, 0, 360, 1, -1)
    return mask[..., None].astype(np.float32)


@pytest.mark.parametrize("kind", range(len(OPACITY_KINDS)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pasted_opacity_stays_inside_the_lung_and_brightens_it(kind: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = _lungs()
    # dark lungs in brighter tissue, as on a radiograph
    image = np.where(mask > 0, 0.2, 0.7).astype(np.float32) + rng.normal(0, 0.02, mask.shape).astype(np.float32)
    opaque = paste_opacity(image, mask, kind, 0.9, _seed(seed)).numpy()
    outside = mask[..., 0] == 0
    np.testing.assert_array_equal(opaque[..., 0][outside], image[..., 0][outside])
    change = (opaque - image)[..., 0][~outside]
    assert change.min() >= -1e-6  # an opacity only brightens
    assert change.mean() > 0.03, OPACITY_KINDS[kind]
    field = opacity_field(mask, kind, _seed(seed)).numpy()
    assert field.min() >= 0.0 and field.max() <= 1.0 and field[..., 0][outside].max() == 0.0


def test_effusion_fills_the_lower_zone() -> None:
    mask = _lungs()
    field = opacity_field(mask, OPACITY_KINDS.index("effusion"), _seed(3)).numpy()[..., 0]
    rows = np.nonzero(mask[..., 0].any(axis=1))[0]
    middle = (rows.min() + rows.max()) // 2
    assert field[middle:].sum() > 5 * field[:middle].sum()


def test_opacity_augmentation_keeps_the_whole_lung_in_the_mask() -> None:
    mask = _lungs()
    image = np.where(mask > 0, 0.2, 0.7).astype(np.float32)
    params = {**OFF, "opacity": {"probability": 1.0, "range": [0.9, 0.9]}}
    for seed in range(4):
        out_image, out_mask = augment_image_and_mask(image, mask, _seed(seed), params)
        np.testing.assert_array_equal(out_mask.numpy(), mask)
        assert not np.array_equal(out_image.numpy(), image)


def test_borders_blank_the_image_and_the_mask_together() -> None:
    mask = np.ones((40, 40, 1), np.float32)
    image = np.full((40, 40, 1), 0.5, np.float32)
    seen_band = False
    for seed in range(8):
        out_image, out_mask = add_borders(image, mask, 0.3, _seed(seed))
        out_image, out_mask = out_image.numpy(), out_mask.numpy()
        band = out_mask == 0
        assert np.isin(out_image[band], [0.0, 1.0]).all()
        np.testing.assert_array_equal(out_image[~band], 0.5)
        seen_band |= bool(band.any())
    assert seen_band


def test_augmentation_runs_inside_a_tf_data_pipeline() -> None:
    mask = _lungs(32)
    image = np.where(mask > 0, 0.2, 0.7).astype(np.float32)
    dataset = tf.data.Dataset.from_tensors((image, mask)).repeat(4)
    seeds = tf.data.Dataset.random(seed=1).batch(2)
    augmented = tf.data.Dataset.zip((dataset, seeds)).map(
        lambda pair, seed: augment_image_and_mask(pair[0], pair[1], seed, EVERYTHING)
    )
    for out_image, out_mask in augmented:
        assert out_image.shape == (32, 32, 1) and set(np.unique(out_mask.numpy())) <= {0.0, 1.0}
