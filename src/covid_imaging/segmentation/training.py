"""Training loop helpers: seeding, device/precision set-up and ``fit`` with best weights.

``training_params`` (merged over ``DEFAULT_TRAINING_PARAMS``)::

    epochs: 50
    learning_rate: 0.001
    loss: bce_dice              # bce | dice | bce_dice
    early_stopping: {enabled: true, patience: 10, min_delta: 0.0}
    reduce_lr: {enabled: true, patience: 5, factor: 0.5, min_lr: 1.0e-6}
    verbose: 0
    jit_compile: auto           # XLA; false avoids its compile time for tiny runs
    run_eagerly: false          # true for debugging (and tiny CPU tests)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from covid_imaging.segmentation._params import merge_params
from covid_imaging.segmentation.losses import (
    dice_coefficient,
    get_segmentation_loss,
    iou_coefficient,
)

MONITOR = "val_loss"

DEFAULT_TRAINING_PARAMS: dict[str, Any] = {
    "epochs": 50,
    "learning_rate": 1e-3,
    "loss": "bce_dice",
    "early_stopping": {"enabled": True, "patience": 10, "min_delta": 0.0},
    "reduce_lr": {"enabled": True, "patience": 5, "factor": 0.5, "min_lr": 1e-6},
    "verbose": 0,
    "jit_compile": "auto",
    "run_eagerly": False,
}


class BestWeightsKeeper(keras.callbacks.Callback):
    """Remember the weights of the epoch with the lowest ``monitor`` and restore them.

    Unlike ``EarlyStopping(restore_best_weights=True)`` this also restores when
    training runs all its epochs, and it works with early stopping switched off.
    """

    def __init__(self, monitor: str = MONITOR) -> None:
        super().__init__()
        self.monitor = monitor
        self.best_value = np.inf
        self.best_epoch: int | None = None
        self.best_weights: list[np.ndarray] | None = None

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self.best_value, self.best_epoch, self.best_weights = np.inf, None, None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        # A NaN loss compares False with everything, so it is never "best".
        if value is not None and float(value) < self.best_value:
            self.best_value, self.best_epoch = float(value), epoch
            self.best_weights = self.model.get_weights()

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class LearningRateRecorder(keras.callbacks.Callback):
    """Record the learning rate each epoch is trained with (before any reduction)."""

    def __init__(self) -> None:
        super().__init__()
        self.learning_rates: list[float] = []

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self.learning_rates = []

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        learning_rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        self.learning_rates.append(float(learning_rate))


def build_callbacks(params: Mapping[str, Any]) -> list[keras.callbacks.Callback]:
    """EarlyStopping / ReduceLROnPlateau on ``val_loss`` as enabled in ``params``."""
    callbacks: list[keras.callbacks.Callback] = []
    stopping = params["early_stopping"]
    if stopping["enabled"]:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=MONITOR,
                patience=int(stopping["patience"]),
                min_delta=float(stopping["min_delta"]),
                # BestWeightsKeeper restores in every case, not only after a stop.
                restore_best_weights=False,
            )
        )
    reduce_lr = params["reduce_lr"]
    if reduce_lr["enabled"]:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=MONITOR,
                patience=int(reduce_lr["patience"]),
                factor=float(reduce_lr["factor"]),
                min_lr=float(reduce_lr["min_lr"]),
            )
        )
    return callbacks


def compile_segmentation_model(model: keras.Model, params: Mapping[str, Any] = DEFAULT_TRAINING_PARAMS) -> None:
    """Adam(``learning_rate``), the configured loss, Dice and IoU metrics."""
    # Optimizer variables must live in the strategy the model was built under.
    with model.distribute_strategy.scope():
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=float(params["learning_rate"])),
            loss=get_segmentation_loss(params["loss"]),
            metrics=[dice_coefficient, iou_coefficient],
            jit_compile=params["jit_compile"],
            run_eagerly=bool(params["run_eagerly"]),
        )


def train_segmentation_model(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    training_params: Mapping[str, Any] | None = None,
    extra_callbacks: Iterable[keras.callbacks.Callback] = (),
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Compile and fit ``model``; return it with the best-``val_loss`` weights and its history.

    The model is compiled with Adam(``learning_rate``), the loss named in
    ``training_params["loss"]`` and the ``dice_coefficient`` / ``iou_coefficient``
    metrics. The history maps every logged metric (``loss``, ``val_loss``,
    ``dice_coefficient``, ``val_iou_coefficient``, ...) and ``lr`` to one float per
    epoch actually run.
    """
    params = merge_params(DEFAULT_TRAINING_PARAMS, training_params, where="training")
    compile_segmentation_model(model, params)
    best_weights = BestWeightsKeeper()
    learning_rates = LearningRateRecorder()
    fit_history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=int(params["epochs"]),
        shuffle=False,  # the tf.data pipeline shuffles (and fit ignores it for datasets)
        callbacks=[learning_rates, *build_callbacks(params), *extra_callbacks, best_weights],
        verbose=int(params["verbose"]),
    )
    history = {
        name: [float(value) for value in values]
        for name, values in fit_history.history.items()
        # ReduceLROnPlateau logs the rate AFTER its update; "lr" below is the one used.
        if name != "learning_rate"
    }
    history["lr"] = list(learning_rates.learning_rates)
    return model, history


def set_global_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and TensorFlow/Keras for reproducible runs."""
    keras.utils.set_random_seed(int(seed))


def configure_device(
    mixed_precision: bool = False, multi_gpu: bool = False
) -> tf.distribute.Strategy:
    """Pick the distribution strategy and the Keras dtype policy for this machine.

    - ``MirroredStrategy`` only with more than one GPU and ``multi_gpu``;
      otherwise the default (single device) strategy.
    - ``mixed_float16`` only with a GPU and ``mixed_precision`` (it is slower on
      CPU); otherwise ``float32``, which also resets an earlier call.

    Build the model inside ``strategy.scope()``.
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            # Share the GPU politely instead of grabbing all of its memory.
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # Already initialised: the setting can no longer change.
    policy = "mixed_float16" if gpus and mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)
    if multi_gpu and len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def describe_device() -> str:
    """ "CPU", or the first GPU's name (prefixed with the count if several), for run tags."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    name = str(details.get("device_name", gpus[0].name))
    return name if len(gpus) == 1 else f"{len(gpus)}x {name}"
