"""Training loop: best-weight restoration, lr history, early stopping, device set-up."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from covid_imaging.segmentation.training import (
    BestWeightsKeeper,
    describe_device,
    set_global_seed,
    train_segmentation_model,
    training_device,
)

FAST = {"run_eagerly": True, "jit_compile": False, "loss": "bce"}


def _pixel_model() -> keras.Model:
    """One 1x1 conv + sigmoid: a 2-weight 'segmentation model' that trains instantly."""
    inputs = keras.Input((8, 8, 1))
    logits = keras.layers.Conv2D(1, 1, kernel_initializer="zeros", name="logits")(inputs)
    outputs = keras.layers.Activation("sigmoid", dtype="float32")(logits)
    return keras.Model(inputs, outputs)


def _conflicting_datasets() -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Train on all-lung masks, validate on empty masks: val loss rises every epoch."""
    images = np.ones((4, 8, 8, 1), np.float32)
    train = tf.data.Dataset.from_tensor_slices((images, np.ones_like(images))).batch(2)
    val = tf.data.Dataset.from_tensor_slices((images, np.zeros_like(images))).batch(2)
    return train, val


def test_best_weights_keeper_restores_the_lowest_val_loss_epoch() -> None:
    model = _pixel_model()
    keeper = BestWeightsKeeper()
    keeper.set_model(model)
    keeper.on_train_begin()
    epoch_weights = []
    for epoch, val_loss in enumerate([3.0, 1.0, 2.0, float("nan")]):
        weights = [np.full_like(w, epoch + 1.0) for w in model.get_weights()]
        model.set_weights(weights)
        epoch_weights.append(weights)
        keeper.on_epoch_end(epoch, {"val_loss": val_loss})
    keeper.on_train_end()
    assert keeper.best_epoch == 1
    for restored, expected in zip(model.get_weights(), epoch_weights[1], strict=True):
        np.testing.assert_array_equal(restored, expected)


def test_training_returns_the_best_model_even_without_early_stopping() -> None:
    set_global_seed(0)
    train, val = _conflicting_datasets()
    params = {
        **FAST,
        "epochs": 4,
        "learning_rate": 0.05,
        "early_stopping": {"enabled": False},
        "reduce_lr": {"enabled": True, "patience": 1, "factor": 0.5},
    }
    model, history = train_segmentation_model(_pixel_model(), train, val, params)

    val_loss = history["val_loss"]
    assert len(val_loss) == 4
    assert np.all(np.diff(val_loss) > 0)
    restored_loss = model.evaluate(val, verbose=0, return_dict=True)["loss"]
    assert restored_loss == pytest.approx(min(val_loss), rel=1e-5)
    assert restored_loss < val_loss[-1] - 1e-3

    # Epochs 0-1 at the initial rate; each later non-improving epoch halves it.
    np.testing.assert_allclose(history["lr"], [0.05, 0.05, 0.025, 0.0125], rtol=1e-6)
    expected_keys = {
        "loss",
        "val_loss",
        "dice_coefficient",
        "val_dice_coefficient",
        "iou_coefficient",
        "val_iou_coefficient",
        "lr",
    }
    assert expected_keys <= set(history)
    assert all(isinstance(value, float) for values in history.values() for value in values)


def test_early_stopping_stops_after_patience() -> None:
    train, val = _conflicting_datasets()
    params = {
        **FAST,
        "epochs": 10,
        "learning_rate": 0.05,
        "early_stopping": {"enabled": True, "patience": 1},
        "reduce_lr": {"enabled": False},
    }
    _, history = train_segmentation_model(_pixel_model(), train, val, params)
    assert len(history["loss"]) == 2  # epoch 0 is best, epoch 1 exhausts patience
    assert history["lr"] == pytest.approx([0.05, 0.05])


def test_unknown_training_parameter_is_rejected() -> None:
    train, val = _conflicting_datasets()
    with pytest.raises(ValueError, match="Unknown training parameter 'epoch'"):
        train_segmentation_model(_pixel_model(), train, val, {"epoch": 3})


def test_set_global_seed_makes_random_draws_repeatable() -> None:
    set_global_seed(42)
    first = (np.random.rand(3), tf.random.uniform([3]).numpy())
    set_global_seed(42)
    second = (np.random.rand(3), tf.random.uniform([3]).numpy())
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="CPU-only behaviour")
def test_cpu_gets_the_default_strategy_and_float32() -> None:
    with training_device(mixed_precision=True, multi_gpu=True) as strategy:
        assert not isinstance(strategy, tf.distribute.MirroredStrategy)
        assert strategy.num_replicas_in_sync == 1
        assert keras.mixed_precision.global_policy().name == "float32"
    assert describe_device() == "CPU"
