"""Figures render (Agg, no pyplot) with the expected panels."""

from __future__ import annotations

import io

import numpy as np
import pytest

from covid_imaging.segmentation.plots import plot_sample_predictions, plot_training_curves


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def test_training_curves_plot_train_and_validation() -> None:
    history = {
        "loss": [1.0, 0.5, 0.4],
        "val_loss": [1.1, 0.7, 0.6],
        "dice_coefficient": [0.3, 0.6, 0.7],
        "val_dice_coefficient": [0.2, 0.5, 0.6],
        "lr": [1e-3, 1e-3, 5e-4],
    }
    figure = plot_training_curves(history)
    loss_axis, dice_axis = figure.axes
    assert [line.get_label() for line in loss_axis.get_lines()] == ["train", "validation"]
    np.testing.assert_allclose(dice_axis.get_lines()[1].get_ydata(), [0.2, 0.5, 0.6])
    assert _png_bytes(figure).startswith(b"\x89PNG")


def test_sample_predictions_has_four_rows_per_sample() -> None:
    rng = np.random.default_rng(0)
    images = [rng.random((16, 16, 1)) for _ in range(3)]
    masks = [(image > 0.5).astype(np.uint8) for image in images]
    figure = plot_sample_predictions(images, masks, images, masks, titles=["a", "b", "c"], model_name="unet")
    assert len(figure.axes) == 4 * 3 + 1  # and the probability row's colour bar
    assert figure.axes[-1].get_ylabel() == "lung probability"
    assert figure.get_suptitle().startswith("unet:")
    assert figure.axes[0].get_ylabel() == "Image"
    assert _png_bytes(figure).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="same, non-zero number"):
        plot_sample_predictions(images, masks[:2], images, masks)


def test_training_curves_say_which_model_and_that_training_dice_is_soft() -> None:
    figure = plot_training_curves({"loss": [1.0], "dice_coefficient": [0.3]}, model_name="fcn", loss="bce_dice")
    assert figure.get_suptitle().startswith("fcn:")
    assert figure.axes[0].get_title() == "Loss (bce_dice)"
    assert "Soft Dice" in figure.axes[1].get_title()
