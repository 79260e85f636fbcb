"""Model builders: shapes, structure, one training step, mixed precision, registry."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from covid_imaging.segmentation.losses import bce_dice_loss
from covid_imaging.segmentation.models import (
    MODEL_BUILDERS,
    build_deeplabv3,
    build_segmentation_model,
    build_unet,
)

TINY = {"base_filters": 4, "dropout_rate": 0.1, "batch_norm": True}


def _layers_of(model: keras.Model, kind: type) -> list[layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, kind)]


@pytest.mark.parametrize("name", sorted(MODEL_BUILDERS))
@pytest.mark.parametrize("input_size", [32, 64])
def test_output_shape_equals_input_shape(name: str, input_size: int) -> None:
    model = build_segmentation_model(name, input_size=input_size, **TINY)
    assert model.input_shape == (None, input_size, input_size, 1)
    assert model.output_shape == (None, input_size, input_size, 1)
    prediction = keras.ops.convert_to_numpy(
        model(np.zeros((1, input_size, input_size, 1), np.float32), training=False)
    )
    assert prediction.shape == (1, input_size, input_size, 1)
    assert 0.0 <= prediction.min() and prediction.max() <= 1.0  # sigmoid output


@pytest.mark.parametrize("name", sorted(MODEL_BUILDERS))
def test_one_training_step_gives_finite_loss(name: str) -> None:
    keras.utils.set_random_seed(0)
    model = build_segmentation_model(name, input_size=32, **TINY)
    # Eager: tracing the graph would take ~10x longer than this tiny step on CPU.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=bce_dice_loss, run_eagerly=True)
    rng = np.random.default_rng(0)
    images = rng.random((2, 32, 32, 1), dtype=np.float32)
    masks = (images > 0.5).astype(np.float32)
    weights_before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(images, masks)
    assert np.isfinite(loss)
    assert any(
        not np.allclose(before, after)
        for before, after in zip(weights_before, model.get_weights(), strict=True)
    ), "the training step did not update any weight"


def test_unet_has_four_levels_with_doubling_filters() -> None:
    model = build_unet(input_size=32, base_filters=4, dropout_rate=0.0, batch_norm=False)
    assert len(_layers_of(model, layers.MaxPooling2D)) == 4
    assert len(_layers_of(model, layers.Conv2DTranspose)) == 4
    assert len(_layers_of(model, layers.Concatenate)) == 4
    assert model.get_layer("down1_2_conv").filters == 4
    assert model.get_layer("down4_2_conv").filters == 32
    assert model.get_layer("bottleneck_2_conv").filters == 64  # base * 16
    assert not _layers_of(model, layers.BatchNormalization)


def test_deeplab_aspp_uses_the_given_atrous_rates() -> None:
    model = build_deeplabv3(
        input_size=32, base_filters=4, dropout_rate=0.0, batch_norm=True, atrous_rates=(1, 2, 3)
    )
    rates = sorted(
        layer.dilation_rate[0]
        for layer in model.layers
        if layer.name.startswith("aspp_rate") and isinstance(layer, layers.Conv2D)
    )
    assert rates == [1, 2, 3]
    default = build_deeplabv3(input_size=32, base_filters=4, dropout_rate=0.0, batch_norm=False)
    assert default.get_layer("aspp_rate18_conv").dilation_rate == (18, 18)
    assert len(_layers_of(default, layers.Conv2DTranspose)) == 3


def test_output_stays_float32_under_mixed_precision() -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = build_unet(input_size=32, base_filters=4, dropout_rate=0.0, batch_norm=True)
    assert model.get_layer("logits").compute_dtype == "float16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.output.dtype == "float32"


def test_unknown_model_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="Unknown segmentation model 'segnet'.*unet"):
        build_segmentation_model("segnet", input_size=32)


def test_input_size_must_survive_the_poolings() -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        build_unet(input_size=40, base_filters=4, dropout_rate=0.0, batch_norm=False)


def test_ensemble_averages_its_members_and_survives_a_save(tmp_path):
    from covid_imaging.segmentation.models import build_ensemble

    members = [build_segmentation_model(name, input_size=32, base_filters=4) for name in ("unet", "unet", "fcn")]
    ensemble = build_ensemble(members)
    images = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    expected = np.mean([member.predict_on_batch(images) for member in members], axis=0)
    np.testing.assert_allclose(ensemble.predict_on_batch(images), expected, atol=1e-6)
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras", compile=False)
    np.testing.assert_allclose(loaded.predict_on_batch(images), expected, atol=1e-6)


def test_ensemble_of_members_trained_at_different_sizes_takes_the_largest(tmp_path):
    from covid_imaging.segmentation.models import build_ensemble

    large = build_segmentation_model("unet", input_size=48, base_filters=4)
    small = build_segmentation_model("fcn", input_size=32, base_filters=4)
    ensemble = build_ensemble([large, small])
    assert ensemble.input_shape[1:] == (48, 48, 1)
    images = np.random.default_rng(1).random((2, 48, 48, 1)).astype("float32")
    resize = keras.layers.Resizing
    small_map = resize(48, 48)(small.predict_on_batch(resize(32, 32)(images))).numpy()
    expected = (large.predict_on_batch(images) + small_map) / 2
    assert ensemble.output_shape[1:] == large.output_shape[1:]
    np.testing.assert_allclose(ensemble.predict_on_batch(images), expected, atol=1e-5)
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras", compile=False)
    np.testing.assert_allclose(loaded.predict_on_batch(images), expected, atol=1e-5)
