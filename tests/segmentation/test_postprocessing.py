"""Post-processing on hand-made probability maps (and, when present, real masks)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from covid_imaging.segmentation.postprocessing import (
    DEFAULT_POSTPROCESSING_PARAMS,
    REFERENCE_POSTPROCESSING_PARAMS,
    postprocess_probability_map,
    scaled_min_area,
)

STEPS_OFF = {
    "dilation": {"enabled": False},
    "closing": {"enabled": False},
    "fill_holes": {"enabled": False},
    "area_filter": {"enabled": False},
    "keep_largest": {"enabled": False},
}
ONLY_THRESHOLDS = {
    **STEPS_OFF,
    "reference_size": 64,  # no scaling for the 64x64 maps below
    "global_threshold": {"method": "fixed", "value": 0.5},
    "local_threshold": {"block_size": 15, "offset": -25.0},
}


def _union_map() -> np.ndarray:
    """A large confident plateau (0.9) and a small faint blob (0.3) on a 0 background."""
    probability = np.zeros((64, 64), np.float32)
    probability[5:35, 5:35] = 0.9
    probability[45:52, 45:52] = 0.3
    return probability


def _rectangles(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """A map of 0.9 inside each (top, left, height, width) box and 0.0 elsewhere."""
    probability = np.zeros(shape, np.float32)
    for top, left, height, width in boxes:
        probability[top : top + height, left : left + width] = 0.9
    return probability


def test_union_keeps_regions_found_by_only_one_threshold() -> None:
    probability = _union_map()
    union = postprocess_probability_map(probability, ONLY_THRESHOLDS)
    global_only = postprocess_probability_map(
        probability, {**ONLY_THRESHOLDS, "local_threshold": {"enabled": False}}
    )
    local_only = postprocess_probability_map(
        probability, {**ONLY_THRESHOLDS, "global_threshold": {"enabled": False}}
    )
    # The faint blob is only above its neighbourhood, not above 0.5 ...
    assert local_only[48, 48] == 1 and global_only[48, 48] == 0
    # ... and the flat centre of the plateau is only above 0.5, not above its neighbourhood.
    assert global_only[20, 20] == 1 and local_only[20, 20] == 0
    assert union[48, 48] == 1 and union[20, 20] == 1
    np.testing.assert_array_equal(union, global_only | local_only)
    assert union[60, 5] == 0 and union[40, 40] == 0  # background stays background


def test_default_offset_does_not_turn_a_flat_map_into_foreground() -> None:
    flat = np.full((64, 64), 0.3, np.float32)
    assert postprocess_probability_map(flat).sum() == 0
    # Why the default offset is negative: OpenCV keeps pixel > mean - offset.
    positive = postprocess_probability_map(
        flat,
        {
            **ONLY_THRESHOLDS,
            "global_threshold": {"enabled": False},
            "local_threshold": {"block_size": 15, "offset": 5.0},
        },
    )
    assert positive.all()


def test_otsu_separates_a_bimodal_map_and_ignores_a_pure_noise_map() -> None:
    rng = np.random.default_rng(0)
    probability = np.full((64, 64), 0.1, np.float32)
    probability[10:40, 10:30] = 0.8
    params = {**STEPS_OFF, "local_threshold": {"enabled": False}}
    expected = (probability > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(postprocess_probability_map(probability, params), expected)
    noise = rng.uniform(0.0, 0.05, (64, 64)).astype(np.float32)
    assert postprocess_probability_map(noise, params).sum() == 0  # Otsu floored at 0.1


def test_area_filter_removes_a_small_blob_and_keeps_a_big_one() -> None:
    # 100x100 px: 5,000 px at 512x512 scales to ~191 px.
    probability = _rectangles((100, 100), [(10, 10, 30, 30), (70, 70, 5, 5)])
    result = postprocess_probability_map(probability, {"keep_largest": {"enabled": False}})
    np.testing.assert_array_equal(result, _rectangles((100, 100), [(10, 10, 30, 30)]) > 0)


def test_minimum_area_scales_with_the_image_area() -> None:
    assert scaled_min_area(5000, 512, (512, 512)) == pytest.approx(5000)
    assert scaled_min_area(5000, 512, (256, 256)) == pytest.approx(1250)
    assert scaled_min_area(50000, 512, (1024, 512)) == pytest.approx(100000)
    # The same 1,500 px blob in a 256x256 map: kept when the threshold is given
    # at 512x512 (-> 1,250 px), removed when the same number is meant at 256x256.
    blob = _rectangles((256, 256), [(50, 50, 30, 50)])
    area_only = {**STEPS_OFF, "area_filter": {"enabled": True, "min_area_px": 5000}}
    assert postprocess_probability_map(blob, {**area_only, "reference_size": 512}).sum() == 1500
    assert postprocess_probability_map(blob, {**area_only, "reference_size": 256}).sum() == 0


def test_keep_largest_keeps_the_n_biggest_components() -> None:
    probability = _rectangles((64, 64), [(2, 2, 20, 20), (40, 40, 10, 10), (2, 40, 15, 15)])
    params = {**STEPS_OFF, "keep_largest": {"enabled": True, "count": 2}}
    result = postprocess_probability_map(probability, params)
    expected = _rectangles((64, 64), [(2, 2, 20, 20), (2, 40, 15, 15)]) > 0
    np.testing.assert_array_equal(result, expected)


def test_closing_bridges_a_gap_and_hole_filling_fills_a_hole() -> None:
    probability = _rectangles((64, 64), [(10, 10, 20, 20)])
    probability[10:30, 19] = 0.0  # 1-px split
    probability[40:60, 40:60] = 0.9
    probability[48:52, 48:52] = 0.0  # 4x4 hole
    base = {**STEPS_OFF, "reference_size": 64, "local_threshold": {"enabled": False}}
    split = postprocess_probability_map(probability, base)
    assert split[20, 19] == 0 and split[50, 50] == 0
    closed = postprocess_probability_map(probability, {**base, "closing": {"enabled": True}})
    assert closed[20, 19] == 1
    filled = postprocess_probability_map(probability, {**base, "fill_holes": {"enabled": True}})
    assert filled[50, 50] == 1 and filled[20, 19] == 0


def test_shape_repair_fills_the_hull_of_a_bitten_lung_only() -> None:
    # Left: a 30x20 lung with a 14x12 bite out of its outer side (solidity 0.72);
    # right: a whole 30x20 lung (solidity 1.0), which stays as it is.
    probability = _rectangles((64, 64), [(10, 4, 30, 20), (10, 36, 30, 20)])
    probability[18:32, 4:16] = 0.0
    base = {**STEPS_OFF, "reference_size": 64, "local_threshold": {"enabled": False}}
    plain = postprocess_probability_map(probability, base)
    repaired = postprocess_probability_map(probability, {**base, "shape_repair": {"enabled": True, "min_solidity": 0.8}})
    assert plain[25, 8] == 0 and repaired[25, 8] == 1  # the bite is filled in
    np.testing.assert_array_equal(repaired[:, 32:], plain[:, 32:])
    np.testing.assert_array_equal(repaired, _rectangles((64, 64), [(10, 4, 30, 20), (10, 36, 30, 20)]) > 0)
    lenient = postprocess_probability_map(probability, {**base, "shape_repair": {"enabled": True, "min_solidity": 0.7}})
    np.testing.assert_array_equal(lenient, plain)  # 0.72 is above this threshold


def test_dilation_grows_each_side_by_one_pixel_per_iteration() -> None:
    probability = _rectangles((64, 64), [(20, 20, 10, 10)])
    params = {
        **STEPS_OFF,
        "reference_size": 64,
        "local_threshold": {"enabled": False},
        "dilation": {"enabled": True, "iterations": 2},
        "kernel_size": 3,
    }
    assert postprocess_probability_map(probability, params).sum() == 14 * 14


def test_output_is_binary_uint8_of_the_input_shape() -> None:
    probability = np.random.default_rng(1).random((48, 40, 1)).astype(np.float32)
    result = postprocess_probability_map(probability)
    assert result.dtype == np.uint8 and result.shape == (48, 40)
    assert set(np.unique(result)) <= {0, 1}


@pytest.mark.parametrize(
    "params, message",
    [
        ({"dilate": {"enabled": True}}, "Unknown postprocessing parameter 'dilate'"),
        ({"local_threshold": {"block_size": 16}, "reference_size": 64}, "odd"),
        ({"global_threshold": {"method": "triangle"}}, "otsu"),
    ],
)
def test_invalid_parameters_are_rejected(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        postprocess_probability_map(np.zeros((64, 64), np.float32), params)


@pytest.mark.shared_data
def test_defaults_keep_real_lungs_that_the_reference_area_deletes(
    shenzhen_mask_paths: list[Path],
) -> None:
    reference_area = {"area_filter": REFERENCE_POSTPROCESSING_PARAMS["area_filter"]}
    lung_pixels, kept_by_reference_area = 0, 0
    for path in shenzhen_mask_paths:
        mask = (cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
        for size in (512, 256):
            resized = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
            result = postprocess_probability_map(resized.astype(np.float32))
            dice = 2 * np.sum(result & resized) / (result.sum() + resized.sum())
            assert dice > 0.99, f"{path.name} at {size}px lost lung area (Dice {dice:.3f})"
        lung_pixels += int(mask.sum())
        kept_by_reference_area += int(
            postprocess_probability_map(mask.astype(np.float32), reference_area).sum()
        )
    # The reference 50,000 px minimum deletes most real Shenzhen lungs.
    assert kept_by_reference_area < 0.25 * lung_pixels
    assert DEFAULT_POSTPROCESSING_PARAMS["area_filter"]["min_area_px"] == 5000


@pytest.mark.parametrize("seed", range(6))
def test_hole_filling_equals_scipys_binary_fill_holes(seed) -> None:
    from scipy.ndimage import binary_fill_holes

    from covid_imaging.segmentation.postprocessing import fill_holes

    rng = np.random.default_rng(seed)
    # blobs with holes, holes open to the border, diagonal-only gaps (4- vs 8-connectivity)
    mask = (cv2.GaussianBlur(rng.random((97, 131)).astype(np.float32), (0, 0), 2.0 + seed) > 0.5).astype(np.uint8)
    mask[rng.random(mask.shape) < 0.02] ^= 1
    expected = binary_fill_holes(mask).astype(np.uint8)
    assert expected.sum() > mask.sum()  # every case has holes to fill
    np.testing.assert_array_equal(fill_holes(mask), expected)
