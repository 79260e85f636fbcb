"""BatchNorm moving statistics for networks trained from random weights in few steps.

Keras' BatchNormalization keeps moving averages with momentum 0.99: after ``n`` training
steps the initial statistics (mean 0, variance 1) still weigh ``0.99 ** n``. A deep
network trained from random weights on a CPU budget takes a few hundred steps, so in
inference mode (validation, test) it normalises with statistics that are far from those
of its activations and predicts one class. A lower momentum lets the averages settle.
"""

from __future__ import annotations

import keras


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
