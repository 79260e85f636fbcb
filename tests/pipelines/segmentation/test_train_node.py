"""The training node: what it hands to the catalog, whatever precision trained the model."""

from __future__ import annotations

import re

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from covid_imaging.pipelines.segmentation.nodes import train_segmentation, worst_predictions


def _table(folder, n: int = 6) -> pd.DataFrame:
    rows = []
    for index in range(n):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 5 + index % 3 : 14] = 255
        mask[8:24, 18:27] = 255
        image = np.clip(60 + 0.5 * mask + np.random.default_rng(index).normal(0, 10, mask.shape), 0, 255)
        image_path, mask_path = folder / f"image{index}.png", folder / f"mask{index}.png"
        cv2.imwrite(str(image_path), image.astype(np.uint8))
        cv2.imwrite(str(mask_path), mask)
        rows.append({"image_id": f"i{index}", "split": "validation" if index >= 4 else "train",
                     "image_path": str(image_path), "mask_path": str(mask_path), "mask_convention": "nlm"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("native_bfloat16", [True, False])
def test_a_unet_trained_in_bfloat16_is_saved_computing_in_float32(tmp_path, monkeypatch, native_bfloat16):
    # Where the CPU computes bfloat16 natively the U-Net trains in it; the model the
    # catalog saves computes in float32 either way, so it predicts alike on any machine.
    monkeypatch.setattr("covid_imaging.training.core.native_bfloat16_cpu", lambda: native_bfloat16)
    trained_in = []
    monkeypatch.setattr(
        "covid_imaging.pipelines.segmentation.nodes.train_segmentation_model",
        lambda model, *args, **kwargs: (trained_in.append(model.get_layer(index=1).compute_dtype), (model, {}))[1],
    )
    model, _ = train_segmentation(
        _table(tmp_path),
        {"builder": "unet", "base_filters": 4, "dropout_rate": 0.0, "batch_norm": True},
        {"epochs": 1, "mixed_precision": "bfloat16", "jit_compile": False},
        {"enabled": False},
        {"image_size": 32, "batch_size": 2, "seed": 1},
    )
    assert trained_in == ["bfloat16" if native_bfloat16 else "float32"]
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
    assert model.predict_on_batch(np.zeros((1, 32, 32, 1), np.float32)).dtype == np.float32


def _thresholding_model() -> keras.Model:
    """Lung where the image is bright: right on every image of ``_table``."""
    inputs = keras.Input((32, 32, 1))
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", name="lung")(inputs)
    model = keras.Model(inputs, outputs, name="stand_in")
    model.get_layer("lung").set_weights([np.full((1, 1, 1, 1), 40.0, np.float32), np.array([-20.0], np.float32)])
    return model


def test_the_worst_predictions_figure_shows_the_lowest_dice_images_lowest_first(tmp_path):
    rows = _table(tmp_path).assign(split="test", source="demo", group_id="one patient")
    per_image = pd.DataFrame({"image_id": rows["image_id"], "dice_native_post": [0.9, 0.5, 0.95, 0.7, 0.99, 0.8]})
    figure = worst_predictions(_thresholding_model(), rows, per_image, {"batch_size": 4}, {}, 2, "test")
    titles = [axis.get_title() for axis in figure.axes[:2]]
    assert titles == ["i1\nDice at native size 0.500", "i3\nDice at native size 0.700"]
    assert "the 2 test images with the lowest Dice at native size" in figure.get_suptitle()


@pytest.mark.parametrize(("data", "message"), [
    ({"n_sample_prediction": 2}, "segmentation.unet.data.n_sample_prediction"),
    ({"n_worst_predictions": 0}, "n_worst_predictions must be an integer >= 1"),
])
def test_a_model_data_block_with_a_typo_or_no_figure_fails_naming_the_key(tmp_path, data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        train_segmentation(_table(tmp_path), {"builder": "unet", "base_filters": 4}, {"epochs": 1}, {"enabled": False},
                           {"image_size": 32, "batch_size": 2, "seed": 1, **data})
