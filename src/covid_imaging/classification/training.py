"""Classifier training on the one training core, class balancing and tf.data input pipelines.

Parameters arrive as plain dicts (Kedro parameters) in the core schema
(:mod:`covid_imaging.training.core`) plus ``class_weight``; misspelt keys fail.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import keras
import numpy as np
import tensorflow as tf

from covid_imaging.classification.transfer import (
    CLASSIFIER_LAYER_NAME,
    freeze_all_but,
    unfreeze_all,
    unfreeze_last_n,
)
from covid_imaging.training.core import fit_model, resolve_training_params
from covid_imaging.training.inputs import resize_to_model_input

History = dict[str, list[float]]

FINE_TUNE_LEARNING_RATE = 1e-4

# Classification's own keys on top of the core schema (covid_imaging.training.core).
CLASSIFICATION_TRAINING_DEFAULTS: dict[str, Any] = {
    "class_weight": None,  # null | balanced (n / (k * count) per class) | {class index: weight}
}


def resolve_classification_params(params: Mapping[str, Any] | None = None, *, where: str = "training") -> dict[str, Any]:
    """The core training schema plus ``class_weight``; unknown keys raise with their name."""
    resolved = resolve_training_params(params, CLASSIFICATION_TRAINING_DEFAULTS, where=where)
    weights = resolved["class_weight"]
    if isinstance(weights, Mapping):
        # YAML/JSON mappings may carry string keys ("0": 1.5).
        resolved["class_weight"] = {int(k): float(v) for k, v in weights.items()}
    elif weights not in (None, "balanced"):
        raise ValueError(f"{where}.class_weight must be null, 'balanced' or a mapping, got {weights!r}")
    return resolved


@keras.saving.register_keras_serializable(package="covid_imaging")  # saved models load with it compiled
class BalancedAccuracy(keras.metrics.Metric):
    """Mean per-class recall over the classes seen so far (sparse labels, probabilities).

    Sample weights are ignored: with class weights, weighted accuracy would count the
    rare class up twice. Classes without a sample in the epoch are left out of the mean.
    """

    def __init__(self, n_classes: int, name: str = "balanced_accuracy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.n_classes = int(n_classes)
        self.correct = self.add_variable((self.n_classes,), initializer="zeros", name="correct")
        self.total = self.add_variable((self.n_classes,), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:  # noqa: ARG002 - see class docstring
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        predicted = keras.ops.cast(keras.ops.argmax(y_pred, axis=-1), "int32")
        one_hot = keras.ops.one_hot(labels, self.n_classes, dtype=self.dtype)
        hit = keras.ops.cast(keras.ops.equal(labels, predicted), self.dtype)
        self.total.assign_add(keras.ops.sum(one_hot, axis=0))
        self.correct.assign_add(keras.ops.sum(one_hot * hit[:, None], axis=0))

    def result(self):
        seen = keras.ops.cast(self.total > 0, self.dtype)
        recall = keras.ops.divide_no_nan(self.correct, self.total)
        return keras.ops.divide_no_nan(keras.ops.sum(recall * seen), keras.ops.sum(seen))

    def reset_state(self) -> None:
        self.correct.assign(keras.ops.zeros_like(self.correct))
        self.total.assign(keras.ops.zeros_like(self.total))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_classes": self.n_classes}


def train_classifier(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None,
    params: Mapping[str, Any] | None = None,
    *,
    train_labels: Sequence[int] | np.ndarray | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
    compile: bool = True,  # noqa: A002 - keras' own word
) -> tuple[keras.Model, History]:
    """Fit on integer labels with the training core (sparse cross-entropy, accuracy and
    balanced accuracy per epoch, training and validation).

    Returns the model (best weights by validation loss restored, in every case) and the
    history as ``{metric: [one float per epoch]}`` with ``lr``. ``class_weight:
    balanced`` needs ``train_labels``. A ``seed`` in ``params`` seeds Python, NumPy and
    the backend (and, with ``deterministic``, TensorFlow's ops) before training.
    """
    config = resolve_classification_params(params)
    class_weight = config["class_weight"]
    if class_weight == "balanced":
        if train_labels is None:
            raise ValueError("class_weight: balanced needs the training labels (train_labels)")
        class_weight = balanced_class_weights(train_labels)
    n_classes = int(model.output_shape[-1])
    return fit_model(
        model, train_ds, val_ds, config,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy", BalancedAccuracy(n_classes)],
        class_weight=class_weight, extra_callbacks=extra_callbacks, initial_epoch=initial_epoch, compile=compile,
    )


def merge_histories(histories: Sequence[History]) -> History:
    """Concatenate per-phase histories; adds ``phase`` (1-based) and ``epoch`` columns.

    Metrics missing from a phase are filled with NaN so every list has equal length.
    """
    keys = list(dict.fromkeys(key for history in histories for key in history))
    lengths = [max((len(v) for v in history.values()), default=0) for history in histories]
    merged: History = {key: [] for key in keys}
    for history, length in zip(histories, lengths, strict=True):
        for key in keys:
            merged[key].extend(history.get(key, [math.nan] * length))
    merged["phase"] = [float(p) for p, n in enumerate(lengths, start=1) for _ in range(n)]
    merged["epoch"] = [float(e) for e in range(sum(lengths))]
    return merged


def fine_tune_two_phase(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None,
    head_params: Mapping[str, Any] | None = None,
    finetune_params: Mapping[str, Any] | None = None,
    unfreeze: Literal["all"] | int = "all",
    head_layer_names: Sequence[str] = (CLASSIFIER_LAYER_NAME,),
    keep_batchnorm_frozen: bool = True,
    train_labels: Sequence[int] | np.ndarray | None = None,
) -> tuple[keras.Model, History]:
    """Phase 1: train only the head; phase 2: unfreeze ("all" or last n) at lr 1e-4.

    ``finetune_params`` default to ``learning_rate=1e-4`` unless they set one.
    """
    freeze_all_but(model, head_layer_names)
    model, head_history = train_classifier(model, train_ds, val_ds, head_params, train_labels=train_labels)

    if unfreeze == "all":
        unfreeze_all(model, keep_batchnorm_frozen=keep_batchnorm_frozen)
    elif isinstance(unfreeze, int) and not isinstance(unfreeze, bool):
        unfreeze_last_n(model, unfreeze, keep_batchnorm_frozen=keep_batchnorm_frozen)
    else:
        raise ValueError(f"unfreeze must be 'all' or an int, got {unfreeze!r}")
    phase2_params = {"learning_rate": FINE_TUNE_LEARNING_RATE, **(finetune_params or {})}
    model, finetune_history = train_classifier(model, train_ds, val_ds, phase2_params, train_labels=train_labels)
    return model, merge_histories([head_history, finetune_history])


def balanced_class_weights(labels: Sequence[int] | np.ndarray) -> dict[int, float]:
    """``n_samples / (n_classes * count)`` per class (scikit-learn's "balanced")."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels)
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def undersample_indices(labels: Sequence[int] | np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices that keep ``min class count`` random samples of every class (sorted).

    Apply to the training split only: validation and test keep their real prevalence.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError("labels must be a non-empty 1-D array")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    per_class = counts.min()
    kept = [
        rng.choice(np.flatnonzero(labels == cls), size=per_class, replace=False) for cls in classes
    ]
    return np.sort(np.concatenate(kept))


def make_augmentation(
    flip: bool = True, rotation_factor: float = 0.02, seed: int | None = 0
) -> keras.Sequential:
    """Light augmentation: horizontal flip and small rotation (``factor`` x 360 degrees)."""
    augmentation_layers: list[keras.layers.Layer] = []
    if flip:
        augmentation_layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if rotation_factor > 0:
        augmentation_layers.append(
            keras.layers.RandomRotation(rotation_factor, fill_mode="constant", seed=seed)
        )
    return keras.Sequential(augmentation_layers, name="augmentation")


def _load_image(path: tf.Tensor, image_size: int, channels: int) -> tf.Tensor:
    raw = tf.io.read_file(path)
    image = tf.io.decode_image(raw, channels=channels, dtype=tf.uint8, expand_animations=False)
    return resize_to_model_input(image, image_size)


def make_classification_dataset(
    image_paths: Sequence[str | os.PathLike],
    labels: Sequence[int] | np.ndarray | None = None,
    image_size: int = 224,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    augment: bool = False,
    channels: int = 1,
    flip: bool = True,
    rotation_factor: float = 0.02,
) -> tf.data.Dataset:
    """Stream 8-bit (gray by default) images from disk as ``(images, int labels)`` batches.

    Images are decoded, resized to ``image_size`` square, scaled to [0, 1] float32,
    optionally shuffled (seeded, reshuffled each epoch) and lightly augmented, then
    prefetched. Without ``labels`` the dataset yields images only (prediction).
    """
    paths = [os.fspath(p) for p in image_paths]
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(paths)} image paths but {len(labels)} labels")
    if labels is None:
        dataset = tf.data.Dataset.from_tensor_slices(paths)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, dtype=np.int32)))
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def load(path, *label):
        image = _load_image(path, image_size, channels)
        return (image, *label) if label else image

    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if augment:
        augmentation = make_augmentation(flip, rotation_factor, seed)

        def augment_batch(images, *label):
            augmented = augmentation(images, training=True)
            return (augmented, *label) if label else augmented

        dataset = dataset.map(augment_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
