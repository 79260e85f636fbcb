"""Soft Dice / IoU metrics and losses against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from covid_imaging.segmentation.losses import (
    bce_dice_loss,
    bce_loss,
    dice_coefficient,
    dice_loss,
    get_segmentation_loss,
    iou_coefficient,
)


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """Batch of 2 images 4x4: image 0 has |T| = 4, |P| = 4, overlap 2; image 1 is empty."""
    y_true = np.zeros((2, 4, 4, 1), np.float32)
    y_pred = np.zeros((2, 4, 4, 1), np.float32)
    y_true[0, 0, :4] = 1.0
    y_pred[0, 0, 2:4] = 1.0
    y_pred[0, 1, 0:2] = 1.0
    return y_true, y_pred


def _np(tensor) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(tensor))


def test_dice_and_iou_are_per_image_and_match_hand_values() -> None:
    y_true, y_pred = _pair()
    dice = _np(dice_coefficient(y_true, y_pred, smooth=1e-9))
    iou = _np(iou_coefficient(y_true, y_pred, smooth=1e-9))
    assert dice.shape == (2,)
    assert dice[0] == pytest.approx(2 * 2 / (4 + 4))
    assert iou[0] == pytest.approx(2 / (4 + 4 - 2))
    # Both empty: the smoothing term makes it a perfect score, not 0/0.
    assert dice[1] == pytest.approx(1.0)
    assert iou[1] == pytest.approx(1.0)


def test_default_smoothing_is_laplace_one() -> None:
    y_true, y_pred = _pair()
    assert _np(dice_coefficient(y_true, y_pred))[0] == pytest.approx((4 + 1) / (8 + 1))
    assert _np(iou_coefficient(y_true, y_pred))[0] == pytest.approx((2 + 1) / (6 + 1))


def test_losses_are_zero_ish_for_a_perfect_prediction_and_larger_otherwise() -> None:
    y_true, y_pred = _pair()
    perfect = np.clip(y_true, 1e-7, 1 - 1e-7)
    assert _np(dice_loss(y_true, perfect))[0] == pytest.approx(0.0, abs=1e-5)
    assert _np(bce_dice_loss(y_true, y_pred))[0] > _np(bce_dice_loss(y_true, perfect))[0] + 0.5


def test_bce_dice_is_the_sum_of_its_parts() -> None:
    rng = np.random.default_rng(0)
    y_true = (rng.random((3, 8, 8, 1)) > 0.5).astype(np.float32)
    y_pred = rng.uniform(0.05, 0.95, (3, 8, 8, 1)).astype(np.float32)
    expected_bce = -np.mean(
        y_true * np.log(y_pred) + (1 - y_true) * np.log(1 - y_pred), axis=(1, 2, 3)
    )
    np.testing.assert_allclose(_np(bce_loss(y_true, y_pred)), expected_bce, rtol=1e-4)
    np.testing.assert_allclose(
        _np(bce_dice_loss(y_true, y_pred)),
        expected_bce + _np(dice_loss(y_true, y_pred)),
        rtol=1e-4,
    )


def test_loss_registry() -> None:
    assert get_segmentation_loss("bce") is bce_loss
    assert get_segmentation_loss("dice") is dice_loss
    assert get_segmentation_loss("bce_dice") is bce_dice_loss
    with pytest.raises(ValueError, match="Unknown segmentation loss 'focal'"):
        get_segmentation_loss("focal")
