"""The one resize from an 8-bit image to a network input, shared by training, evaluation,
lung masking, Grad-CAM and inference: a model must meet the same pixels wherever it runs."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def resize_to_model_input(image: tf.Tensor | np.ndarray, image_size: int) -> tf.Tensor:
    """``(H, W, C)`` or ``(N, H, W, C)`` 8-bit pixels → ``image_size``² float32 in ``[0, 1]``.

    Anti-aliased bilinear: without anti-aliasing, shrinking a 256- or 512-px image to a
    small network input skips pixels instead of averaging them.
    """
    resized = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size), method="bilinear", antialias=True)
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)
