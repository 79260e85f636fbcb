"""Segmentation training on the one training core (:mod:`covid_imaging.training.core`).

``training_params`` are the core schema plus ``loss``, with these segmentation
defaults (the rest as in the core)::

    epochs: 50
    learning_rate: 0.001
    loss: bce_dice              # bce | dice | bce_dice
    early_stopping: {enabled: true, patience: 10, min_delta: 0.0}
    reduce_lr: {enabled: true, patience: 5, factor: 0.5, min_lr: 1.0e-6}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import keras
import tensorflow as tf

from covid_imaging.segmentation.losses import (
    dice_coefficient,
    get_segmentation_loss,
    iou_coefficient,
)
from covid_imaging.training.core import (
    BestWeightsKeeper,
    LearningRateRecorder,
    compile_model,
    describe_device,
    fit_model,
    resolve_training_params,
    seed_everything,
    training_device,
)

__all__ = [
    "DEFAULT_TRAINING_PARAMS", "BestWeightsKeeper", "LearningRateRecorder", "SEGMENTATION_TRAINING_DEFAULTS",
    "compile_segmentation_model", "describe_device",
    "resolve_segmentation_params", "set_global_seed", "train_segmentation_model", "training_device",
]

SEGMENTATION_TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-3,
    "loss": "bce_dice",
    "reduce_lr": {"enabled": True, "patience": 5, "factor": 0.5, "min_lr": 1e-6},
}


def resolve_segmentation_params(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The core training schema plus ``loss``; unknown keys raise with their name."""
    resolved = resolve_training_params(params, SEGMENTATION_TRAINING_DEFAULTS)
    get_segmentation_loss(resolved["loss"])  # an unknown loss fails here, before any work
    return resolved


DEFAULT_TRAINING_PARAMS: dict[str, Any] = resolve_segmentation_params()


def compile_segmentation_model(model: keras.Model, params: Mapping[str, Any] | None = None) -> None:
    """Compile as :func:`train_segmentation_model` does: optimizer, loss, Dice and IoU."""
    resolved = resolve_segmentation_params(params)
    compile_model(model, resolved, loss=get_segmentation_loss(resolved["loss"]),
                  metrics=[dice_coefficient, iou_coefficient])


def train_segmentation_model(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    training_params: Mapping[str, Any] | None = None,
    extra_callbacks: Iterable[keras.callbacks.Callback] = (),
    name: str | None = None,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Compile and fit ``model``; return it with the best-``val_loss`` weights and its history.

    The model is compiled with the configured optimizer (Adam at ``learning_rate`` by
    default), the loss named in ``training_params["loss"]`` and the
    ``dice_coefficient`` / ``iou_coefficient`` metrics. The history maps every logged
    metric (``loss``, ``val_loss``, ``dice_coefficient``, ``val_iou_coefficient``, ...)
    and ``lr`` to one float per epoch actually run.
    """
    params = resolve_segmentation_params(training_params)
    return fit_model(
        model, train_ds, val_ds, params,
        loss=get_segmentation_loss(params["loss"]),
        metrics=[dice_coefficient, iou_coefficient],
        extra_callbacks=extra_callbacks, name=name,
    )


def set_global_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python's ``random``, NumPy and TensorFlow/Keras (and make TF ops deterministic)."""
    seed_everything(seed, deterministic)
