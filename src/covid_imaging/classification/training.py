"""Training loops, class balancing and tf.data input pipelines for classifiers.

Parameters arrive as plain dicts (Kedro parameters); :class:`TrainingParams` turns
them into a typed, validated configuration and rejects misspelt keys.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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

History = dict[str, list[float]]

_DEFAULT_LEARNING_RATES = {"adam": 1e-3, "sgd": 1e-2}
_DEFAULT_WEIGHT_DECAY = {"adam": None, "sgd": 1e-4}
FINE_TUNE_LEARNING_RATE = 1e-4


@dataclass(frozen=True)
class TrainingParams:
    """Typed training configuration; build it with :meth:`from_dict`.

    ``learning_rate`` / ``weight_decay`` left as None take the optimizer's default
    (adam: 1e-3 / none; sgd: 0.01 / 1e-4). ``lr_drop_epochs`` are 0-based epoch
    indices at whose start the learning rate is multiplied by ``lr_drop_factor``.
    """

    epochs: int = 50
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float | None = None
    momentum: float = 0.8
    weight_decay: float | None = None
    lr_drop_epochs: tuple[int, ...] = ()
    lr_drop_factor: float = 0.1
    lr_patience: int = 5
    lr_factor: float = 0.1
    min_lr: float = 1e-7
    early_stopping_patience: int = 10
    class_weight: Mapping[int, float] | None = None
    seed: int | None = None
    verbose: int = 0
    run_eagerly: bool = False  # debugging / tiny CPU runs: skips slow graph tracing
    # XLA: "auto" (Keras' default) | true | false. On CPU, XLA-compiling a deep backbone's
    # training step (ResNet101 and up) takes minutes; false keeps the plain TF graph.
    jit_compile: bool | str = "auto"
    metrics: tuple[str, ...] = ("accuracy",)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None = None) -> TrainingParams:
        """Validate a plain dict (unknown keys raise) and fill in defaults."""
        params = dict(params or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"Unknown training parameters {unknown}; known: {sorted(known)}")
        if "lr_drop_epochs" in params:
            params["lr_drop_epochs"] = tuple(int(e) for e in params["lr_drop_epochs"] or ())
        if "metrics" in params:
            params["metrics"] = tuple(params["metrics"])
        if params.get("class_weight") is not None:
            # YAML/JSON mappings may carry string keys ("0": 1.5).
            params["class_weight"] = {int(k): float(v) for k, v in params["class_weight"].items()}
        config = cls(**params)
        if config.optimizer not in _DEFAULT_LEARNING_RATES:
            raise ValueError(
                f"optimizer must be one of {sorted(_DEFAULT_LEARNING_RATES)}, got {config.optimizer!r}"
            )
        if config.jit_compile not in (True, False, "auto"):
            raise ValueError(f"jit_compile must be true, false or 'auto', got {config.jit_compile!r}")
        if config.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {config.epochs}")
        return config

    @property
    def resolved_learning_rate(self) -> float:
        """Learning rate actually used."""
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return _DEFAULT_LEARNING_RATES[self.optimizer]

    @property
    def resolved_weight_decay(self) -> float | None:
        """Weight decay actually used."""
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return _DEFAULT_WEIGHT_DECAY[self.optimizer]


def make_optimizer(config: TrainingParams) -> keras.optimizers.Optimizer:
    """Adam or SGD with momentum, with (decoupled) weight decay where configured."""
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate=config.resolved_learning_rate,
            momentum=config.momentum,
            weight_decay=config.resolved_weight_decay,
        )
    return keras.optimizers.Adam(
        learning_rate=config.resolved_learning_rate,
        weight_decay=config.resolved_weight_decay,
    )


def step_decay(drop_epochs: Sequence[int], factor: float = 0.1) -> Callable[[int, float], float]:
    """Keras ``LearningRateScheduler`` function multiplying the LR at ``drop_epochs``.

    It works on the current rate, so it composes with ReduceLROnPlateau.
    """
    drops = frozenset(drop_epochs)

    def schedule(epoch: int, learning_rate: float) -> float:
        return float(learning_rate) * factor if epoch in drops else float(learning_rate)

    return schedule


def make_callbacks(config: TrainingParams, has_validation: bool) -> list[keras.callbacks.Callback]:
    """ReduceLROnPlateau + EarlyStopping (best weights restored) + optional step decay."""
    monitor = "val_loss" if has_validation else "loss"
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor,
            factor=config.lr_factor,
            patience=config.lr_patience,
            min_lr=config.min_lr,
        ),
        keras.callbacks.EarlyStopping(
            monitor=monitor,
            patience=config.early_stopping_patience,
            restore_best_weights=True,
        ),
    ]
    if config.lr_drop_epochs:
        callbacks.append(
            keras.callbacks.LearningRateScheduler(
                step_decay(config.lr_drop_epochs, config.lr_drop_factor)
            )
        )
    return callbacks


def _history_to_floats(history: Mapping[str, Sequence[Any]]) -> History:
    return {key: [float(v) for v in values] for key, values in history.items()}


def train_classifier(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None,
    params: Mapping[str, Any] | None = None,
) -> tuple[keras.Model, History]:
    """Compile (always, so trainability changes take effect) and fit on integer labels.

    Returns the model (best weights by validation loss restored) and the history as
    ``{metric: [one float per epoch]}`` including the learning rate. A ``seed`` in
    ``params`` seeds Python, NumPy and the backend globally before training.
    """
    config = TrainingParams.from_dict(params)
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    model.compile(
        optimizer=make_optimizer(config),
        loss="sparse_categorical_crossentropy",
        metrics=list(config.metrics),
        run_eagerly=config.run_eagerly,
        jit_compile=config.jit_compile,
    )
    fit_history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        callbacks=make_callbacks(config, has_validation=val_ds is not None),
        class_weight=dict(config.class_weight) if config.class_weight else None,
        verbose=config.verbose,
        shuffle=False,  # datasets shuffle themselves (seeded) in make_classification_dataset
    )
    return model, _history_to_floats(fit_history.history)


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
) -> tuple[keras.Model, History]:
    """Phase 1: train only the head; phase 2: unfreeze ("all" or last n) at lr 1e-4.

    ``finetune_params`` default to ``learning_rate=1e-4`` unless they set one.
    """
    freeze_all_but(model, head_layer_names)
    model, head_history = train_classifier(model, train_ds, val_ds, head_params)

    if unfreeze == "all":
        unfreeze_all(model, keep_batchnorm_frozen=keep_batchnorm_frozen)
    elif isinstance(unfreeze, int) and not isinstance(unfreeze, bool):
        unfreeze_last_n(model, unfreeze, keep_batchnorm_frozen=keep_batchnorm_frozen)
    else:
        raise ValueError(f"unfreeze must be 'all' or an int, got {unfreeze!r}")
    phase2_params = {"learning_rate": FINE_TUNE_LEARNING_RATE, **(finetune_params or {})}
    model, finetune_history = train_classifier(model, train_ds, val_ds, phase2_params)
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
    image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size), antialias=True)
    return tf.clip_by_value(image / 255.0, 0.0, 1.0)


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
