"""Tiny data and weight-comparison helpers for the classification tests."""

import keras
import numpy as np
import tensorflow as tf

from covid_imaging.classification.transfer import iter_leaf_layers

N_CLASSES = 3


def random_batch(size: int, n: int = 4, channels: int = 1, seed: int = 0):
    """Random images in [0, 1] with labels cycling over N_CLASSES."""
    rng = np.random.default_rng(seed)
    images = rng.random((n, size, size, channels), dtype=np.float32)
    labels = np.arange(n) % N_CLASSES
    return images, labels


def tiny_dataset(size: int, n: int = 6, batch_size: int = 3, seed: int = 0) -> tf.data.Dataset:
    images, labels = random_batch(size, n, seed=seed)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def leaf_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Copies of every leaf layer's weights, by layer name."""
    return {
        layer.name: [np.array(w) for w in layer.get_weights()]
        for layer in iter_leaf_layers(model)
        if layer.weights
    }


def weights_equal(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
