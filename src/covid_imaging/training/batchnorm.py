"""BatchNorm moving statistics for networks trained from random weights in few steps.

Keras' BatchNormalization keeps moving averages with momentum 0.99: after ``n`` training
steps the initial statistics (mean 0, variance 1) still weigh ``0.99 ** n``. A deep
network trained from random weights on a CPU budget takes a few hundred steps, so in
inference mode (validation, test) it normalises with statistics that are far from those
of its activations and predicts one class. A lower momentum lets the averages settle.
"""

from __future__ import annotations

import itertools

import keras
import tensorflow as tf


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of ``model``, nested sub-models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):  # a backbone nested as one layer
            found.extend(batchnorm_layers(layer))
    return found


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> int:
    """Set the moving-average momentum of every BatchNorm layer; returns how many.

    Must run before the model is compiled (the traced training step reads it).
    """
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"batchnorm_momentum must be in [0, 1), got {momentum!r}")
    layers = batchnorm_layers(model)
    for layer in layers:
        layer.momentum = float(momentum)
    return len(layers)


def recompute_batchnorm_statistics(model: keras.Model, dataset: tf.data.Dataset, n_batches: int) -> int:
    """Replace every BatchNorm layer's moving statistics by the average of its batch
    statistics over ``n_batches`` training batches at the current weights ("precise BN").

    Moving averages lag the weights: after a few hundred fast-changing steps they
    describe an earlier network. Each batch is run in training mode with the momentum
    set so that the moving value becomes the running mean of the batches seen (the first
    batch replaces it); the layers' own momenta are restored afterwards. No weight other
    than the moving statistics changes. Returns the number of batches used.
    """
    layers = batchnorm_layers(model)
    if not layers or n_batches < 1:
        return 0
    momenta = [layer.momentum for layer in layers]
    used = 0
    try:
        for used, batch in enumerate(itertools.islice(dataset, n_batches), start=1):
            images = batch[0] if isinstance(batch, tuple | list) else batch
            for layer in layers:
                layer.momentum = (used - 1) / used  # running mean: moving = mean of batches 1..used
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return used


class PreciseBatchNorm(keras.callbacks.Callback):
    """After the last training step of every epoch (before validation), recompute the
    BatchNorm moving statistics from ``n_batches`` batches of ``dataset``."""

    def __init__(self, dataset: tf.data.Dataset, n_batches: int) -> None:
        super().__init__()
        self.dataset, self.n_batches = dataset, int(n_batches)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        steps = self.params.get("steps")
        if steps and batch + 1 == steps:
            recompute_batchnorm_statistics(self.model, self.dataset, self.n_batches)
