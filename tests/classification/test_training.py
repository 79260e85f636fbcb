"""Training loop, two-phase fine-tuning, undersampling and the tf.data input pipeline."""

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from covid_imaging.classification.models import build_simple_cnn
from covid_imaging.classification.training import (
    BalancedAccuracy,
    balanced_class_weights,
    fine_tune_two_phase,
    make_classification_dataset,
    merge_histories,
    resolve_classification_params,
    train_classifier,
    undersample_indices,
)
from covid_imaging.training import make_optimizer

from .helpers import leaf_weights, random_batch, tiny_dataset, weights_equal

SMALL_CNN = {"input_size": 32, "filters": (4, 8), "dense_units": 8}
FAST = {"run_eagerly": True}


# ------------------------------------------------------------------ parameters


def test_params_fill_optimizer_defaults():
    sgd = resolve_classification_params({"optimizer": "sgd"})
    assert sgd["learning_rate"] == pytest.approx(0.01)
    assert sgd["weight_decay"] == pytest.approx(1e-4)
    adam = resolve_classification_params({})
    assert adam["learning_rate"] == pytest.approx(1e-3)
    assert adam["weight_decay"] is None


def test_sgd_optimizer_uses_momentum_and_weight_decay():
    optimizer = make_optimizer(resolve_classification_params({"optimizer": "sgd"}))
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.momentum == pytest.approx(0.8)
    assert optimizer.weight_decay == pytest.approx(1e-4)
    assert float(optimizer.learning_rate) == pytest.approx(0.01)


def test_params_reject_unknown_keys_and_optimizers():
    with pytest.raises(ValueError, match="learnig_rate"):
        resolve_classification_params({"learnig_rate": 0.1})
    with pytest.raises(ValueError, match=r"training\.early_stopping\.patince"):
        resolve_classification_params({"early_stopping": {"patince": 3}})
    with pytest.raises(ValueError, match="optimizer"):
        resolve_classification_params({"optimizer": "rmsprop"})
    with pytest.raises(ValueError, match="class_weight"):
        resolve_classification_params({"class_weight": "inverse"})


def test_class_weight_keys_from_yaml_become_ints():
    params = resolve_classification_params({"class_weight": {"0": 1, "2": 3.5}})
    assert params["class_weight"] == {0: 1.0, 2: 3.5}


def test_balanced_accuracy_metric_is_the_mean_recall_of_the_classes_seen():
    metric = BalancedAccuracy(3)
    # class 0: 2 of 3 right; class 1: 1 of 1; class 2 absent -> (2/3 + 1) / 2
    probabilities = np.eye(3, dtype=np.float32)[[0, 0, 1, 1]]
    metric.update_state(np.array([0, 0, 0, 1]), probabilities, sample_weight=np.array([5.0, 1, 1, 1]))
    assert float(metric.result()) == pytest.approx((2 / 3 + 1) / 2)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_balanced_class_weights_upweight_the_rare_class():
    weights = balanced_class_weights([0, 0, 0, 1])
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})


# ---------------------------------------------------------------------- training


def test_train_classifier_returns_per_epoch_history_and_applies_step_decay():
    model = build_simple_cnn(3, **SMALL_CNN)
    _, history = train_classifier(
        model,
        tiny_dataset(32),
        tiny_dataset(32, seed=1),
        {"epochs": 3, "optimizer": "sgd", "lr_drop_epochs": [1], **FAST},
    )
    assert len(history["loss"]) == 3
    assert all(np.isfinite(history["val_loss"]))
    assert {"accuracy", "val_accuracy", "balanced_accuracy", "val_balanced_accuracy"} <= set(history)
    assert history["lr"] == pytest.approx([0.01, 0.001, 0.001])


def test_reduce_lr_on_plateau_divides_by_ten_after_patience():
    model = build_simple_cnn(3, **SMALL_CNN)
    # A tiny learning rate keeps the validation loss on a plateau (below min_delta).
    _, history = train_classifier(
        model,
        tiny_dataset(32),
        tiny_dataset(32, seed=1),
        {"epochs": 4, "learning_rate": 1e-6, "reduce_lr": {"patience": 2, "min_lr": 0.0}, **FAST},
    )
    # The rate each epoch trained with: the cut after epoch 2 shows in epoch 3.
    assert history["lr"] == pytest.approx([1e-6, 1e-6, 1e-6, 1e-7])


def test_early_stopping_stops_and_restores_the_best_weights():
    images, labels = random_batch(32, n=6)
    train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
    # Same images, other labels: learning the training labels worsens validation.
    val = tf.data.Dataset.from_tensor_slices((images, (labels + 1) % 3)).batch(3)
    model = build_simple_cnn(3, **SMALL_CNN, dropout=0.0)
    _, history = train_classifier(
        model,
        train,
        val,
        {"epochs": 8, "learning_rate": 0.01, "early_stopping": {"patience": 2}, **FAST},
    )
    assert len(history["val_loss"]) < 8  # stopped early
    best_epoch = int(np.argmin(history["val_loss"]))
    assert best_epoch < len(history["val_loss"]) - 1
    evaluated = model.evaluate(val, verbose=0, return_dict=True)["loss"]
    assert evaluated == pytest.approx(history["val_loss"][best_epoch], rel=1e-4)


# ------------------------------------------------------------- two-phase tuning


@pytest.mark.parametrize(("unfreeze", "conv_changes"), [(1, False), ("all", True)])
def test_two_phase_trains_head_first_then_unfrozen_layers(unfreeze, conv_changes):
    model = build_simple_cnn(3, **SMALL_CNN, dropout=0.0)
    before = leaf_weights(model)
    model, history = fine_tune_two_phase(
        model,
        tiny_dataset(32),
        tiny_dataset(32, seed=1),
        head_params={"epochs": 2, "learning_rate": 0.05, **FAST},
        finetune_params={"epochs": 1, **FAST},
        unfreeze=unfreeze,
    )
    after = leaf_weights(model)
    assert history["phase"] == [1.0, 1.0, 2.0]
    assert history["epoch"] == [0.0, 1.0, 2.0]
    assert history["lr"][-1] == pytest.approx(1e-4)
    assert not weights_equal(before["classifier"], after["classifier"])
    assert weights_equal(before["dense"], after["dense"]) is not conv_changes
    assert weights_equal(before["conv1"], after["conv1"]) is not conv_changes


def test_merge_histories_pads_missing_metrics_with_nan():
    merged = merge_histories([{"loss": [1.0, 0.5]}, {"loss": [0.4], "learning_rate": [1e-4]}])
    assert merged["loss"] == [1.0, 0.5, 0.4]
    assert np.isnan(merged["learning_rate"][:2]).all() and merged["learning_rate"][2] == 1e-4
    assert merged["phase"] == [1.0, 1.0, 2.0]


# ------------------------------------------------------------------ undersampling


def test_undersampling_balances_classes_reproducibly():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 5)
    kept = undersample_indices(labels, seed=7)
    assert np.bincount(labels[kept]).tolist() == [3, 3, 3]
    assert len(np.unique(kept)) == len(kept)
    np.testing.assert_array_equal(kept, undersample_indices(labels, seed=7))
    assert not np.array_equal(kept, undersample_indices(labels, seed=8))
    # The minority class is kept whole.
    assert set(np.flatnonzero(labels == 1)) <= set(kept)


# ---------------------------------------------------------------------- tf.data


@pytest.fixture
def png_folder(tmp_path):
    paths, labels = [], []
    for index in range(5):
        value = 40 * index + 10
        image = np.full((40, 30), value, dtype=np.uint8)
        path = tmp_path / f"img{index}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
        labels.append(index % 3)
    return paths, labels


def test_dataset_streams_resized_scaled_gray_images(png_folder):
    paths, labels = png_folder
    dataset = make_classification_dataset(paths, labels, image_size=16, batch_size=2)
    batches = list(dataset.as_numpy_iterator())
    images = np.concatenate([b[0] for b in batches])
    got_labels = np.concatenate([b[1] for b in batches])
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert images.shape == (5, 16, 16, 1) and images.dtype == np.float32
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_allclose(
        images.mean(axis=(1, 2, 3)), [(40 * i + 10) / 255 for i in range(5)], atol=1e-5
    )


def test_dataset_shuffle_is_seeded(png_folder):
    paths, labels = png_folder

    def order(seed):
        dataset = make_classification_dataset(
            paths, list(range(5)), image_size=8, batch_size=5, shuffle=True, seed=seed
        )
        return next(dataset.as_numpy_iterator())[1].tolist()

    assert order(3) == order(3)
    assert sorted(order(3)) == [0, 1, 2, 3, 4]


def test_dataset_augmentation_keeps_shape_and_range(tmp_path):
    image = np.zeros((32, 32), dtype=np.uint8)
    image[:, :8] = 255  # bright left band: a flip or rotation moves it
    path = tmp_path / "band.png"
    cv2.imwrite(str(path), image)
    dataset = make_classification_dataset(
        [path] * 8, [0] * 8, image_size=32, batch_size=8, augment=True, rotation_factor=0.05
    )
    augmented, _ = next(dataset.as_numpy_iterator())
    assert augmented.shape == (8, 32, 32, 1)
    assert augmented.min() >= 0.0 and augmented.max() <= 1.0
    original = image[None, ..., None] / 255.0
    assert not np.allclose(augmented, original, atol=1e-3)


def test_dataset_without_labels_yields_images_only(png_folder):
    paths, _ = png_folder
    batch = next(make_classification_dataset(paths, image_size=8, batch_size=5).as_numpy_iterator())
    assert isinstance(batch, np.ndarray) and batch.shape == (5, 8, 8, 1)


def test_dataset_rejects_mismatched_labels(png_folder):
    paths, _ = png_folder
    with pytest.raises(ValueError, match="labels"):
        make_classification_dataset(paths, [0, 1])


def test_a_trained_classifier_round_trips_through_a_keras_file_with_its_metrics(tmp_path):
    # The catalog loads models compiled: the balanced-accuracy metric must deserialise.
    model = build_simple_cnn(3, **SMALL_CNN)
    train_classifier(model, tiny_dataset(32), None, {"epochs": 1, **FAST})
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    images, _ = random_batch(32)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5)
