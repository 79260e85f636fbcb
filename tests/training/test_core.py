"""The one training core: parameter schema, callbacks, best weights, precision scope, seeds."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from covid_imaging.classification.training import train_classifier
from covid_imaging.imaging.preprocessing import PreprocessingConfig
from covid_imaging.segmentation.training import train_segmentation_model
from covid_imaging.training import (
    as_float32,
    batchnorm_layers,
    device_settings,
    dtype_policy_for,
    native_bfloat16_cpu,
    precision_policy,
    recompute_batchnorm_statistics,
    resolve_training_params,
    seed_everything,
    set_batchnorm_momentum,
    training_device,
)

FAST = {"run_eagerly": True, "jit_compile": False}


def _tiny_classifier(batch_norm: bool = False) -> keras.Model:
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Flatten()(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="classifier", kernel_initializer="zeros")(x)
    return keras.Model(inputs, outputs)


def _conflicting(n: int = 8) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Same images, opposite labels: each training epoch makes validation worse."""
    images = np.random.default_rng(0).random((n, 4, 4, 1), dtype=np.float32)
    train = tf.data.Dataset.from_tensor_slices((images, np.zeros(n, np.int32))).batch(4)
    val = tf.data.Dataset.from_tensor_slices((images, np.ones(n, np.int32))).batch(4)
    return train, val


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"epoch": 3}, r"training\.epoch\b"),
        ({"early_stopping": {"patience": 2, "min_delat": 0.1}}, r"training\.early_stopping\.min_delat"),
        ({"reduce_lr": {"factr": 0.5}}, r"training\.reduce_lr\.factr"),
        ({"warmup": 1}, r"training\.warmup\b"),
    ],
)
def test_unknown_training_key_fails_with_its_name_in_both_tasks(params, name):
    train, val = _conflicting()
    with pytest.raises(ValueError, match=name):
        train_classifier(_tiny_classifier(), train, val, {**FAST, **params})
    with pytest.raises(ValueError, match=name):
        train_segmentation_model(_tiny_classifier(), train, val, {**FAST, **params})


def test_task_keys_belong_to_their_task_only():
    with pytest.raises(ValueError, match=r"training\.loss"):
        train_classifier(_tiny_classifier(), *_conflicting(), {**FAST, "loss": "bce"})
    with pytest.raises(ValueError, match=r"training\.class_weight"):
        train_segmentation_model(_tiny_classifier(), *_conflicting(), {**FAST, "class_weight": "balanced"})


def test_unknown_preprocessing_key_fails_with_its_name():
    with pytest.raises(ValueError, match=r"preprocessing\.clahe\.clip_limt"):
        PreprocessingConfig.from_params({"clahe": {"clip_limt": 3.0}})
    with pytest.raises(ValueError, match=r"preprocessing\.gausian_blur"):
        PreprocessingConfig.from_params({"gausian_blur": {"enabled": False}})
    assert PreprocessingConfig.from_params({"clahe": {"clip_limit": 3.0}}).clahe_clip_limit == 3.0


def test_optimizer_defaults_are_filled_in():
    assert resolve_training_params({"optimizer": "sgd"})["learning_rate"] == pytest.approx(0.01)
    assert resolve_training_params({})["learning_rate"] == pytest.approx(1e-3)


# ------------------------------------------------------------------- callbacks


@pytest.mark.parametrize("early_stopping", [True, False])
def test_best_weights_are_restored_with_and_without_early_stopping(early_stopping):
    train, val = _conflicting()
    model, history = train_classifier(
        _tiny_classifier(), train, val,
        {**FAST, "epochs": 4, "learning_rate": 0.5, "reduce_lr": {"enabled": False},
         "early_stopping": {"enabled": early_stopping, "patience": 2}},
    )
    assert len(history["val_loss"]) == (3 if early_stopping else 4)
    assert np.all(np.diff(history["val_loss"]) > 0)  # epoch 0 is the best
    restored = model.evaluate(val, verbose=0, return_dict=True)["loss"]
    assert restored == pytest.approx(history["val_loss"][0], rel=1e-5)
    assert restored < history["val_loss"][-1] - 1e-3


@pytest.mark.parametrize(("epochs", "min_steps", "expected"), [(2, 0, 2), (2, 5, 3), (4, 5, 4)])
def test_a_small_data_set_trains_for_at_least_min_steps(epochs, min_steps, expected):
    train, val = _conflicting(n=8)  # 2 batches per epoch
    _, history = train_classifier(
        _tiny_classifier(), train, val,
        {**FAST, "epochs": epochs, "min_steps": min_steps, "early_stopping": {"enabled": False}},
    )
    assert len(history["loss"]) == expected  # 5 steps need 3 epochs of 2 batches


def test_min_steps_needs_a_dataset_of_known_length():
    train, val = _conflicting()
    unknown = train.filter(lambda images, labels: True)  # tf.data cannot count it
    with pytest.raises(ValueError, match="min_steps"):
        train_classifier(_tiny_classifier(), unknown, val, {**FAST, "epochs": 1, "min_steps": 3})


def test_warmup_raises_the_rate_linearly_per_step_then_holds():
    images = np.zeros((16, 4, 4, 1), np.float32)
    train = tf.data.Dataset.from_tensor_slices((images, np.zeros(16, np.int32))).batch(4)  # 4 steps
    seen: list[float] = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    _, history = train_classifier(
        _tiny_classifier(), train, None,
        {**FAST, "epochs": 3, "learning_rate": 0.08, "warmup_epochs": 2, "reduce_lr": {"enabled": False},
         "early_stopping": {"enabled": False}},
        extra_callbacks=[Spy()],
    )
    np.testing.assert_allclose(seen, [0.01 * k for k in range(1, 9)] + [0.08] * 4, rtol=1e-6)
    assert history["lr"] == pytest.approx([0.04, 0.08, 0.08])


def test_cosine_decay_sets_each_epochs_rate_after_the_warm_up_and_over_min_steps_epochs():
    images = np.zeros((8, 4, 4, 1), np.float32)
    train = tf.data.Dataset.from_tensor_slices((images, np.zeros(8, np.int32))).batch(4)  # 2 steps
    params = {**FAST, "epochs": 2, "min_steps": 8, "learning_rate": 0.08, "warmup_epochs": 1, "cosine_decay": True,
              "reduce_lr": {"enabled": False}, "early_stopping": {"enabled": False}}
    _, history = train_classifier(_tiny_classifier(), train, None, params)
    # min_steps makes it 4 epochs; epoch 0 is the warm-up's, then 0.08 · ½(1 + cos(π e / 4))
    assert history["lr"] == pytest.approx([0.08, 0.08 * (1 + np.cos(np.pi / 4)) / 2, 0.04,
                                           0.08 * (1 + np.cos(3 * np.pi / 4)) / 2])
    for clash in ({"reduce_lr": {"enabled": True}}, {"lr_drop_epochs": [1]}):
        with pytest.raises(ValueError, match=r"training\.cosine_decay"):
            train_classifier(_tiny_classifier(), train, None, {**params, **clash})


def test_batchnorm_momentum_parameter_reaches_nested_backbones():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()], name="backbone")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(inner(inputs)))
    assert set_batchnorm_momentum(model, 0.9) == 2
    assert [layer.momentum for layer in batchnorm_layers(model)] == [0.9, 0.9]
    with pytest.raises(ValueError, match="batchnorm_momentum"):
        set_batchnorm_momentum(model, 1.0)


def test_lower_batchnorm_momentum_settles_the_moving_statistics():
    # Inputs with mean 5: after 6 steps, momentum 0.99 keeps the moving mean near its 0
    # start (inference then normalises wrongly); 0.5 has settled on 5.
    images = np.full((24, 4, 4, 1), 5.0, np.float32)
    train = tf.data.Dataset.from_tensor_slices((images, np.zeros(24, np.int32))).batch(4)
    means = {}
    for momentum in (None, 0.5):
        model = _tiny_classifier(batch_norm=True)
        train_classifier(model, train, None, {**FAST, "epochs": 1, "batchnorm_momentum": momentum,
                                              "early_stopping": {"enabled": False}})
        means[momentum] = float(np.mean(model.get_layer("bn").moving_mean))
    assert means[None] < 0.5
    assert means[0.5] == pytest.approx(5.0, abs=0.2)


# ----------------------------------------------------------- precision, seeds


def test_precision_policy_does_not_leak_into_the_next_model():
    assert keras.config.dtype_policy().name == "float32"
    with precision_policy("mixed_float16"):
        first = _tiny_classifier()
    second = _tiny_classifier()
    assert first.get_layer("classifier").compute_dtype == "float16"
    assert second.get_layer("classifier").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"


def test_training_device_restores_the_policy_even_when_training_fails():
    with pytest.raises(RuntimeError, match="boom"):
        with training_device(mixed_precision=True):
            raise RuntimeError("boom")
    assert keras.config.dtype_policy().name == "float32"


def test_bfloat16_is_used_only_where_the_chip_computes_it(monkeypatch):
    assert native_bfloat16_cpu("flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    assert native_bfloat16_cpu("flags\t\t: fpu avx512f avx512_bf16\n")
    assert not native_bfloat16_cpu("flags\t\t: fpu avx2 avx512f\n")  # oneDNN would emulate it: slower
    monkeypatch.setattr("covid_imaging.training.core.native_bfloat16_cpu", lambda: False)
    assert dtype_policy_for("bfloat16", has_gpu=False) == "float32"
    assert dtype_policy_for("bfloat16", has_gpu=True) == "mixed_bfloat16"
    monkeypatch.setattr("covid_imaging.training.core.native_bfloat16_cpu", lambda: True)
    assert dtype_policy_for("bfloat16", has_gpu=False) == "mixed_bfloat16"
    assert dtype_policy_for(True, has_gpu=False) == "float32"  # float16 is emulated on CPUs
    assert dtype_policy_for(True, has_gpu=True) == "mixed_float16"
    assert dtype_policy_for(False, has_gpu=True) == "float32"


def test_an_unknown_mixed_precision_value_fails_with_the_key():
    with pytest.raises(ValueError, match=r"training\.mixed_precision.*'float16'"):
        resolve_training_params({"mixed_precision": "float16"})
    assert resolve_training_params({"mixed_precision": "bfloat16"})["mixed_precision"] == "bfloat16"


def test_a_model_trained_in_phases_asks_once_for_its_precision():
    assert device_settings({"head": {"mixed_precision": "bfloat16"}, "fine_tune": {"mixed_precision": "bfloat16"}}) == (
        "bfloat16", False)
    assert device_settings({"main": {"epochs": 3}}) == (False, False)  # the core's defaults
    with pytest.raises(ValueError, match=r"same in every phase.*'head': \('bfloat16', False\)"):
        device_settings({"head": {"mixed_precision": "bfloat16"}, "fine_tune": {}})
    with pytest.raises(ValueError, match=r"mixed_precision.*'fp8'"):
        device_settings({"main": {"mixed_precision": "fp8"}})


def test_a_model_trained_in_bfloat16_is_returned_computing_in_float32():
    keras.utils.set_random_seed(0)
    with precision_policy("mixed_bfloat16"):
        inputs = keras.Input((4, 4, 1))
        backbone = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(3, 3, name="conv")], name="backbone")
        features = keras.layers.BatchNormalization(name="bn")(backbone(inputs))
        outputs = keras.layers.Dense(2, activation="softmax", dtype="float32")(keras.layers.Flatten()(features))
        trained = keras.Model(inputs, outputs, name="bf16_classifier")

    def compute_dtypes(model):  # nested models' layers included
        return {dtype for layer in model.layers
                for dtype in (compute_dtypes(layer) if isinstance(layer, keras.Model) else {layer.compute_dtype})}

    assert trained.get_layer("backbone").get_layer("conv").compute_dtype == "bfloat16"
    converted = as_float32(trained)
    assert compute_dtypes(converted) == {"float32"}
    assert converted.name == trained.name
    for before, after in zip(trained.get_weights(), converted.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    inputs = np.random.default_rng(0).random((3, 4, 4, 1), dtype=np.float32)
    np.testing.assert_allclose(converted.predict_on_batch(inputs), trained.predict_on_batch(inputs), atol=0.02)
    assert as_float32(converted) is converted  # already float32: nothing to rebuild


def test_same_seed_same_weights():
    train, val = _conflicting()

    def run():
        seed_everything(3)  # as the nodes do: seed, build, train
        model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dropout(0.5),
                                  keras.layers.Dense(2, activation="softmax", name="classifier")])
        train_classifier(model, train.shuffle(8, seed=1), val, {**FAST, "epochs": 2, "seed": 3})
        return model.get_weights()

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_recomputed_batchnorm_statistics_are_those_of_the_current_network():
    # Moving statistics from another distribution (mean 0) are replaced by the mean of
    # the batch means at the current weights (inputs of mean 5 and 7: 6), exactly.
    model = _tiny_classifier(batch_norm=True)
    model(np.zeros((4, 4, 4, 1), np.float32), training=True)
    batches = np.concatenate([np.full((4, 4, 4, 1), 5.0, np.float32), np.full((4, 4, 4, 1), 7.0, np.float32)])
    dataset = tf.data.Dataset.from_tensor_slices((batches, np.zeros(8, np.int32))).batch(4)
    before = [np.array(w) for w in model.get_layer("classifier").get_weights()]
    assert recompute_batchnorm_statistics(model, dataset, n_batches=5) == 2
    bn = model.get_layer("bn")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), 6.0, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), 0.0, atol=1e-6)  # constant batches
    assert bn.momentum == pytest.approx(0.99)  # the layer's own momentum is back
    for a, b in zip(before, model.get_layer("classifier").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_training_logs_one_line_per_epoch_with_its_model_name_and_an_eta(caplog):
    """Classification and segmentation share the core: both get the epoch/ETA lines."""
    train, val = _conflicting()
    model = _tiny_classifier()
    model.name = "tiny_classifier"
    with caplog.at_level("INFO", logger="covid_imaging.training.core"):
        train_classifier(model, train, val, {**FAST, "epochs": 3, "early_stopping": {"enabled": False}})
    lines = [record.getMessage() for record in caplog.records if ": epoch " in record.getMessage()]
    assert [line.split(" (")[0] for line in lines] == [f"tiny_classifier: epoch {k}/3" for k in (1, 2, 3)]
    assert "val_loss" in lines[0] and "ETA" in lines[0] and lines[-1].endswith("ETA done")


def _seeded_weights(seed: int) -> list[np.ndarray]:
    seed_everything(seed)
    inputs = keras.Input((8,))
    x = inputs
    for units in (16, 16, 16, 16):  # each layer draws its initializer's seed from Keras' seed source
        x = keras.layers.Dropout(0.1)(keras.layers.Dense(units)(x))
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    return model.get_weights()


def test_same_seed_same_weights_while_other_threads_draw_from_python_random():
    """A Dask worker's own threads use Python's global random while a node builds its model."""
    import random
    import threading

    expected = _seeded_weights(7)
    stop = threading.Event()

    def draw_forever():
        while not stop.is_set():
            random.random()

    noise = threading.Thread(target=draw_forever, daemon=True)
    noise.start()
    try:
        results: list[list[np.ndarray]] = []
        builder = threading.Thread(target=lambda: results.extend(_seeded_weights(7) for _ in range(3)))
        builder.start()
        builder.join()
    finally:
        stop.set()
        noise.join()
    for weights in results:
        assert all(np.array_equal(a, b) for a, b in zip(expected, weights, strict=True))


def test_plain_keras_seed_reproduces_builds_after_seed_everything_in_the_same_thread():
    """A notebook that ran a pipeline in-process, then seeds Keras itself, gets repeatable models."""
    seed_everything(3)

    def build_after_plain_seed() -> list[np.ndarray]:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8,))
        return keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Dense(16)(inputs))).get_weights()

    first, second = build_after_plain_seed(), build_after_plain_seed()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    # and seed_everything itself still reproduces after that
    assert all(np.array_equal(a, b) for a, b in zip(_seeded_weights(7), _seeded_weights(7), strict=True))
