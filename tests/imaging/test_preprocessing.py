"""The preprocessing chain equals the direct OpenCV calls it stands for."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from covid_imaging.imaging.preprocessing import (
    PreprocessingConfig,
    preprocess_gray,
    resize_image,
    resize_mask,
    restore_native_size,
    square_geometry,
)
from tests.conftest import chest_like_image

REFERENCE_PARAMS = {
    "resize": {"size": 48, "interpolation": "area", "mode": "stretch"},
    "gaussian_blur": {"enabled": True, "kernel_size": 5, "sigma": 1.0},
    "morphological_gradient": {"enabled": True, "kernel_size": 3, "iterations": 2},
    "clahe": {"enabled": True, "clip_limit": 3.0, "tile_grid_size": 4},
    "normalisation": "minmax",
}


def test_reference_chain_matches_direct_opencv_calls():
    gray = chest_like_image((120, 100))
    expected = cv2.resize(gray, (48, 48), interpolation=cv2.INTER_AREA)
    expected = cv2.GaussianBlur(expected, (5, 5), 1.0)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
    expected = cv2.morphologyEx(expected, cv2.MORPH_GRADIENT, kernel, iterations=2)
    expected = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(expected)
    expected = cv2.normalize(expected, None, 0, 255, cv2.NORM_MINMAX)
    result = preprocess_gray(gray, PreprocessingConfig.from_params(REFERENCE_PARAMS))
    np.testing.assert_array_equal(result, expected)


def test_each_step_can_be_switched_off():
    gray = chest_like_image((120, 100))
    params = {
        "resize": {"size": 48, "mode": "stretch"},
        "gaussian_blur": {"enabled": False},
        "morphological_gradient": {"enabled": False},
        "clahe": {"enabled": False},
        "normalisation": "none",
    }
    result = preprocess_gray(gray, PreprocessingConfig.from_params(params))
    np.testing.assert_array_equal(result, cv2.resize(gray, (48, 48), interpolation=cv2.INTER_AREA))


def test_gradient_is_applied_the_configured_number_of_times():
    gray = chest_like_image((64, 64))
    once = {**REFERENCE_PARAMS, "morphological_gradient": {"enabled": True, "iterations": 1}, "clahe": {"enabled": False}}
    twice = {**once, "morphological_gradient": {"enabled": True, "iterations": 2}}
    assert not np.array_equal(
        preprocess_gray(gray, PreprocessingConfig.from_params(once)),
        preprocess_gray(gray, PreprocessingConfig.from_params(twice)),
    )


def test_mask_resize_stays_binary():
    mask = np.zeros((299, 299), np.uint8)
    cv2.circle(mask, (150, 150), 80, 255, -1)
    resized = resize_mask(mask, 256)
    assert resized.shape == (256, 256)
    assert set(np.unique(resized)) == {0, 255}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"gaussian_blur": {"kernel_size": 4}}, "odd"),
        ({"normalisation": "zscore"}, "normalisation"),
        ({"resize": {"interpolation": "bogus"}}, "interpolation"),
    ],
)
def test_invalid_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        PreprocessingConfig.from_params(params)


def test_rejects_non_gray_input():
    with pytest.raises(ValueError, match="2-D uint8"):
        preprocess_gray(np.zeros((10, 10, 3), np.uint8), PreprocessingConfig())


def test_pad_mode_keeps_the_aspect_ratio_and_centres_the_image():
    gray = np.full((100, 50), 200, np.uint8)  # portrait, 2:1
    square = resize_image(gray, 64, mode="pad")
    assert square.shape == (64, 64)
    box = square_geometry(100, 50, 64, "pad")
    assert (box.content_height, box.content_width) == (64, 32)
    assert (box.top, box.left) == (0, 16)
    assert (square[:, 16:48] == 200).all()
    assert (square[:, :16] == 0).all() and (square[:, 48:] == 0).all()


def test_pad_mode_mask_lands_where_the_image_does():
    mask = np.zeros((90, 300), np.uint8)
    mask[30:60, 100:200] = 255
    square = resize_mask(mask, 100, mode="pad")  # 300 wide -> scale 1/3, content 30 x 100
    rows, cols = np.nonzero(square)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (35 + 10, 35 + 19, 34, 66)


@pytest.mark.parametrize("mode", ["pad", "stretch"])
@pytest.mark.parametrize("shape", [(512, 512), (700, 1024), (1024, 640), (301, 97)])
def test_native_size_restore_inverts_the_square_resize(mode, shape):
    height, width = shape
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (width // 3, height // 2), (width // 8, height // 3), 0, 0, 360, 255, -1)
    square = resize_mask(mask, 256, mode)
    # a model at 128 px predicts the square; the map comes back at the native size
    model_map = cv2.resize(square.astype(np.float32) / 255.0, (128, 128), interpolation=cv2.INTER_AREA)
    native = restore_native_size(model_map, height, width, mode, square_size=256) > 0.5
    assert native.shape == shape
    overlap = 2 * np.logical_and(native, mask > 0).sum() / (native.sum() + (mask > 0).sum())
    assert overlap > 0.95


@pytest.mark.parametrize("mode", ["pad", "stretch"])
@pytest.mark.parametrize("shape", [(3, 4000), (4000, 3), (2, 5000)])
def test_extreme_aspect_ratios_give_a_full_square_and_a_non_empty_content_box(mode, shape):
    """A 4000 x 3 sliver scales to 0.19 rows at 256 px: the content box is clamped to 1 row."""
    gray = chest_like_image(shape)
    box = square_geometry(*shape, 256, mode)
    assert box.content_height >= 1 and box.content_width >= 1
    result = preprocess_gray(gray, PreprocessingConfig.from_params({"resize": {"size": 256, "mode": mode}}))
    assert result.shape == (256, 256) and result.dtype == np.uint8
    mask = np.zeros(shape, np.uint8)
    mask[:, : shape[1] // 2] = 255
    assert set(np.unique(resize_mask(mask, 256, mode))) <= {0, 255}
    native = restore_native_size(np.ones((256, 256), np.float32), *shape, mode)
    assert native.shape == shape


def test_images_accepted_over_the_default_pixel_budget_are_preprocessed():
    """Ingestion told to accept more than the default budget: preprocessing follows it.

    It used to decode with the default 50 M pixels and stop the run with
    PixelBudgetError on an image that ``ingestion.max_pixels`` had accepted.
    """
    import pandas as pd

    from covid_imaging.imaging.io import DEFAULT_MAX_PIXELS, PixelBudgetError, decode_gray
    from covid_imaging.pipelines.preprocessing.nodes import PreprocessingError, preprocess_images
    from tests.fuzz.bad_inputs import png, png_declaring

    side = 7200  # 51.8 M pixels, just over the default budget
    assert side * side > DEFAULT_MAX_PIXELS
    big = np.zeros((side, side), np.uint8)
    big[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 200
    big_png = png(big)
    del big
    mask_png = png(np.pad(np.full((36, 36), 255, np.uint8), 18))
    files = {"big.png": lambda: big_png, "big_mask.png": lambda: mask_png,
             "bomb.png": lambda: png_declaring(30000, 30000), "bomb_mask.png": lambda: mask_png}
    manifest = pd.DataFrame([
        {"image_id": "big", "image_key": "big.png", "mask_key": "big_mask.png", "width": side, "height": side},
        # the file changed since ingestion: it now declares far more than was accepted
        {"image_id": "bomb", "image_key": "bomb.png", "mask_key": "bomb_mask.png", "width": 64, "height": 48},
    ])
    outputs = preprocess_images(manifest, files, {"resize": {"size": 64}})
    image = decode_gray(outputs["images/big"]())
    assert image.shape == (64, 64) and image[32, 32] > image[2, 2]
    assert set(np.unique(decode_gray(outputs["masks/big"]()))) == {0, 255}
    with pytest.raises(PreprocessingError, match="^bomb.png: declares 30000×30000") as caught:  # checked before decoding
        outputs["images/bomb"]()
    assert isinstance(caught.value.__cause__, PixelBudgetError)


def test_minmax_stretches_a_range_and_keeps_a_constant_image():
    from covid_imaging.imaging.preprocessing import normalise_minmax

    ramp = np.array([[50, 100], [150, 100]], np.uint8)
    assert normalise_minmax(ramp).tolist() == [[0, 127], [255, 127]]
    flat = np.full((8, 8), 128, np.uint8)
    np.testing.assert_array_equal(normalise_minmax(flat), flat)
