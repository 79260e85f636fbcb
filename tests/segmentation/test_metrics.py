"""Per-image metrics against hand-computed values, summaries and the comparison table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covid_imaging.segmentation.metrics import (
    comparison_table,
    dice_score,
    evaluate_segmentation,
    iou_score,
    mean_squared_error,
    pixel_accuracy,
    summarise_segmentation_metrics,
)


def _masks() -> tuple[np.ndarray, np.ndarray]:
    """4x4 masks: |P| = 4, |T| = 6, overlap 3, so 4 + 6 - 2 * 3 = 4 pixels disagree."""
    target = np.zeros((4, 4), np.uint8)
    target[0, :] = 1
    target[1, :2] = 1
    prediction = np.zeros((4, 4), np.uint8)
    prediction[0, 1:] = 1
    prediction[3, 3] = 1
    return prediction, target


def test_binary_metrics_match_hand_values() -> None:
    prediction, target = _masks()
    assert dice_score(prediction, target) == pytest.approx(2 * 3 / (4 + 6))
    assert iou_score(prediction, target) == pytest.approx(3 / 7)
    assert pixel_accuracy(prediction, target) == pytest.approx(12 / 16)
    assert dice_score(prediction * 255, target * 255) == pytest.approx(0.6)  # {0, 255} masks


def test_empty_masks_are_explicit_edge_cases() -> None:
    empty = np.zeros((4, 4), np.uint8)
    full = np.ones((4, 4), np.uint8)
    assert dice_score(empty, empty) == 1.0 and iou_score(empty, empty) == 1.0
    assert dice_score(full, empty) == 0.0 and iou_score(empty, full) == 0.0


def test_mse_compares_probabilities_with_the_mask() -> None:
    target = np.array([[1, 0], [0, 1]], np.uint8)
    probabilities = np.array([[0.5, 0.0], [1.0, 1.0]], np.float32)
    assert mean_squared_error(probabilities, target) == pytest.approx((0.25 + 0 + 1 + 0) / 4)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        dice_score(np.zeros((4, 4)), np.zeros((4, 5)))


def _records() -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for index, source in enumerate(["shenzhen", "shenzhen", "covid", "covid", "covid"]):
        target = np.zeros((16, 16), np.uint8)
        target[2 : 8 + index, 3:12] = 1
        probability = np.clip(target + rng.normal(0, 0.35, target.shape), 0, 1)
        postprocessed = target.copy()
        postprocessed[0:2, :] = 1 if index % 2 else 0
        records.append(
            {
                "image_id": f"img{index}",
                "source": source,
                "probability_map": probability,
                "mask": target,
                "postprocessed": postprocessed,
            }
        )
    return records


def test_evaluate_segmentation_gives_one_row_per_image() -> None:
    records = _records()
    per_image = evaluate_segmentation(records)
    assert list(per_image.columns) == [
        "image_id",
        "source",
        "dice_raw",
        "iou_raw",
        "accuracy_raw",
        "dice_post",
        "iou_post",
        "accuracy_post",
        "mse",
    ]
    assert list(per_image["image_id"]) == [f"img{i}" for i in range(5)]
    first = records[0]
    row = per_image.iloc[0]
    assert row["dice_raw"] == pytest.approx(
        dice_score(first["probability_map"] > 0.5, first["mask"])
    )
    assert row["dice_post"] == 1.0  # image 0: post-processed mask equals the truth
    assert per_image.loc[1, "dice_post"] < 1.0
    # IoU = D / (2 - D) holds image by image, for both stages.
    for stage in ("raw", "post"):
        dice = per_image[f"dice_{stage}"]
        np.testing.assert_allclose(per_image[f"iou_{stage}"], dice / (2 - dice), rtol=1e-12)


def test_summary_has_overall_and_per_source_mean_and_std() -> None:
    per_image = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "source": ["x", "x", "y"],
            "mask_convention": ["nlm", "v7", "v7"],
            "dice_post": [0.8, 0.6, 0.9],
            "mse": [0.1, 0.3, 0.2],
        }
    )
    table = summarise_segmentation_metrics(per_image, group_cols=("source", "mask_convention"))
    assert list(table["grouping"]) == ["all", "source", "source", "mask_convention", "mask_convention"]
    conventions = table[table["grouping"] == "mask_convention"].set_index("group")
    assert conventions.loc["v7", "dice_post_mean"] == pytest.approx(0.75)
    assert conventions.loc["v7", "dice_post_min"] == pytest.approx(0.6)
    summary = table[table["grouping"] != "mask_convention"].set_index("group")
    assert list(summary.index) == ["all", "x", "y"]
    assert summary.loc["all", "n_images"] == 3
    assert summary.loc["all", "dice_post_mean"] == pytest.approx(0.7666666, rel=1e-5)
    assert summary.loc["x", "dice_post_mean"] == pytest.approx(0.7)
    assert summary.loc["x", "dice_post_std"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert summary.loc["y", "mse_mean"] == pytest.approx(0.2)
    assert np.isnan(summary.loc["y", "mse_std"])  # one image: no spread


def test_comparison_table_is_shaped_like_the_paper() -> None:
    summaries = {
        name: summarise_segmentation_metrics(evaluate_segmentation(_records()))
        for name in ("unet", "fcn")
    }
    table = comparison_table(summaries)
    assert list(table.columns) == ["model", "mDice", "mIoU", "MSE"]
    assert list(table["model"]) == ["unet", "fcn"]
    overall = summaries["unet"].iloc[0]
    assert table.loc[0, "mDice"] == pytest.approx(overall["dice_post_mean"])
    assert table.loc[0, "MSE"] == pytest.approx(overall["mse_mean"])
    raw = comparison_table(summaries, stage="raw", group="covid")
    covid = summaries["fcn"].set_index("group").loc["covid"]
    assert raw.loc[1, "mIoU"] == pytest.approx(covid["iou_raw_mean"])
    with pytest.raises(ValueError, match="stage"):
        comparison_table(summaries, stage="final")
