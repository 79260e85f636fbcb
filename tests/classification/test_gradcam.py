"""Grad-CAM / saliency on tiny models, overlays and heatmap-in-mask share."""

import keras
import numpy as np
import pytest

from covid_imaging.classification.gradcam import (
    find_gradcam_layer,
    grad_cam,
    heatmap_mass_inside_mask,
    overlay_heatmap,
    saliency_map,
)
from covid_imaging.classification.models import build_resnet50, build_simple_cnn

SIZE, SQUARE = 32, 8


def square_images(n: int, seed: int):
    """Dim noise; class 1 images carry a bright square at a random place."""
    rng = np.random.default_rng(seed)
    images = rng.random((n, SIZE, SIZE, 1), dtype=np.float32) * 0.2
    labels = np.arange(n) % 2
    corners = rng.integers(0, SIZE - SQUARE, size=(n, 2))
    for image, label, (row, col) in zip(images, labels, corners, strict=True):
        if label:
            image[row : row + SQUARE, col : col + SQUARE] = 1.0
    return images, labels, corners


@pytest.fixture(scope="module")
def square_detector():
    keras.utils.set_random_seed(0)
    images, labels, _ = square_images(64, seed=0)
    model = build_simple_cnn(
        2, input_size=SIZE, filters=(8, 16), dense_units=16, dropout=0.0, flatten=False
    )
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", run_eagerly=True)
    model.fit(images, labels, epochs=10, batch_size=16, verbose=0)
    return model


def test_default_layer_is_the_last_conv_before_pooling(square_detector):
    container, layer = find_gradcam_layer(square_detector)
    assert container is None and layer.name == "conv2"


def test_grad_cam_highlights_the_bright_square(square_detector):
    images, labels, corners = square_images(8, seed=1)
    heatmaps = grad_cam(square_detector, images, class_indices=1)

    assert heatmaps.shape == (8, SIZE, SIZE)
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    for heatmap, label, (row, col) in zip(heatmaps, labels, corners, strict=True):
        if not label:
            continue
        assert heatmap.std() > 0.05  # not constant
        inside = np.zeros((SIZE, SIZE), dtype=bool)
        inside[row : row + SQUARE, col : col + SQUARE] = True
        assert heatmap[inside].mean() > 3 * heatmap[~inside].mean()


def test_grad_cam_depends_on_the_requested_class(square_detector):
    images, _, _ = square_images(2, seed=2)
    for_class_0 = grad_cam(square_detector, images, class_indices=[0, 0])
    for_class_1 = grad_cam(square_detector, images, class_indices=[1, 1])
    assert not np.allclose(for_class_0, for_class_1)


def test_grad_cam_on_a_layer_inside_a_nested_resnet50():
    model = build_resnet50(3, input_size=64)
    container, layer = find_gradcam_layer(model)
    assert container.name == "resnet50" and layer.name == "conv5_block3_out"

    images = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    heatmaps = grad_cam(model, images)
    assert heatmaps.shape == (2, 64, 64)
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0

    finer = grad_cam(model, images, layer_name="conv4_block6_out")
    assert finer.shape == (2, 64, 64) and finer.std() > 0


def test_unknown_grad_cam_layer_raises(square_detector):
    with pytest.raises(ValueError, match="nope"):
        grad_cam(square_detector, np.zeros((1, SIZE, SIZE, 1), np.float32), layer_name="nope")


def test_saliency_is_normalised_and_peaks_on_the_square(square_detector):
    images, labels, corners = square_images(4, seed=3)
    saliency = saliency_map(square_detector, images, class_indices=1)
    assert saliency.shape == (4, SIZE, SIZE)
    assert saliency.min() >= 0.0 and saliency.max() == pytest.approx(1.0)
    for saliency_of_image, label, (row, col) in zip(saliency, labels, corners, strict=True):
        if not label:
            continue
        near_square = np.zeros((SIZE, SIZE), dtype=bool)  # square plus its 2-px rim
        near_square[max(row - 2, 0) : row + SQUARE + 2, max(col - 2, 0) : col + SQUARE + 2] = True
        assert saliency_of_image[near_square].mean() > 3 * saliency_of_image[~near_square].mean()


def test_overlay_blends_colormap_over_gray():
    image = np.full((4, 6), 0.5, dtype=np.float32)
    heatmap = np.zeros((2, 3), dtype=np.float32)
    no_heat = overlay_heatmap(image, heatmap, alpha=0.0)
    assert no_heat.shape == (4, 6, 3) and no_heat.dtype == np.uint8
    assert (no_heat == 128).all()
    full_heat = overlay_heatmap((image * 255).astype(np.uint8), np.ones((4, 6)), alpha=1.0)
    assert full_heat[0, 0].tolist() == [128, 0, 0]  # top of "jet" is dark red
    with pytest.raises(ValueError):
        overlay_heatmap(image, heatmap, alpha=2.0)


def test_heatmap_mass_inside_mask_on_hand_made_maps():
    heatmap = np.array(
        [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    )
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:2, :2] = 255
    assert heatmap_mass_inside_mask(heatmap, mask) == pytest.approx(3 / 4)
    assert heatmap_mass_inside_mask(heatmap, 1 - (mask > 0)) == pytest.approx(1 / 4)
    # An 8x8 mask is resized (nearest) onto the 4x4 heatmap.
    big_mask = np.kron(mask, np.ones((2, 2), dtype=np.uint8))
    assert heatmap_mass_inside_mask(heatmap, big_mask) == pytest.approx(3 / 4)
    assert np.isnan(heatmap_mass_inside_mask(np.zeros((4, 4)), mask))
