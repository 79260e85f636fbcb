"""Small serialisable Keras layers used inside the classifier models.

They live in the model (not in the data pipeline) so that a saved model takes the
same [0, 1] gray input at training, evaluation and Grad-CAM time.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

# Per-channel ImageNet statistics used by keras.applications' ``preprocess_input``.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
_TORCH_STD_RGB = (0.229, 0.224, 0.225)

IMAGENET_PREPROCESSING_MODES = ("caffe", "torch", "tf", "scale_to_255", "none")


@keras.saving.register_keras_serializable(package="covid_imaging")
class RepeatChannels(keras.layers.Layer):
    """Repeat a 1-channel image along the channel axis (gray -> RGB for ImageNet nets)."""

    def __init__(self, repeats: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.repeats = int(repeats)

    def call(self, inputs):  # noqa: D102
        return keras.ops.repeat(inputs, self.repeats, axis=-1)

    def compute_output_shape(self, input_shape):  # noqa: D102
        channels = input_shape[-1]
        return (*input_shape[:-1], None if channels is None else channels * self.repeats)

    def get_config(self) -> dict[str, Any]:  # noqa: D102
        return {**super().get_config(), "repeats": self.repeats}


@keras.saving.register_keras_serializable(package="covid_imaging")
class ImageNetPreprocessing(keras.layers.Layer):
    """Map RGB images in [0, 1] to what a keras.applications backbone expects.

    Modes mirror ``keras.applications.imagenet_utils.preprocess_input`` applied to
    0..255 pixels: ``caffe`` (RGB->BGR, minus ImageNet mean; ResNet, VGG), ``torch``
    (ImageNet mean/std; DenseNet), ``tf`` (scale to [-1, 1]; MobileNetV2, InceptionV3),
    ``scale_to_255`` (EfficientNet normalises inside the model), ``none``.
    """

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in IMAGENET_PREPROCESSING_MODES:
            raise ValueError(
                f"Unknown ImageNet preprocessing mode {mode!r}; "
                f"expected one of {IMAGENET_PREPROCESSING_MODES}"
            )
        self.mode = mode

    def call(self, inputs):  # noqa: D102
        ops = keras.ops
        if self.mode == "caffe":
            bgr = ops.flip(inputs * 255.0, axis=-1)
            return bgr - ops.convert_to_tensor(np.asarray(_CAFFE_MEAN_BGR), dtype=inputs.dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(np.asarray(_TORCH_MEAN_RGB), dtype=inputs.dtype)
            std = ops.convert_to_tensor(np.asarray(_TORCH_STD_RGB), dtype=inputs.dtype)
            return (inputs - mean) / std
        if self.mode == "tf":
            return inputs * 2.0 - 1.0
        if self.mode == "scale_to_255":
            return inputs * 255.0
        return inputs

    def compute_output_shape(self, input_shape):  # noqa: D102
        return input_shape

    def get_config(self) -> dict[str, Any]:  # noqa: D102
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="covid_imaging")
class SigmoidToTwoClasses(keras.layers.Layer):
    """Map one sigmoid probability ``p`` (shape ``(..., 1)``) to ``[1 - p, p]``.

    Lets a binary sigmoid model (the CT basic CNN) share the N-class evaluation,
    Grad-CAM and training code: sparse categorical cross-entropy on ``[1 - p, p]`` is
    binary cross-entropy on ``p``.
    """

    def call(self, inputs):  # noqa: D102
        return keras.ops.concatenate([1.0 - inputs, inputs], axis=-1)

    def compute_output_shape(self, input_shape):  # noqa: D102
        return (*input_shape[:-1], 2)
