"""Soft Dice / IoU metrics and the segmentation losses built from them.

All functions take ``(y_true, y_pred)`` batches shaped ``(B, H, W, 1)`` and return
one value per image (shape ``(B,)``). A model with one head per mask convention
outputs ``(B, H, W, n)``; its targets hold the mask in the image's own head and
``conventions.IGNORED`` in the others, and every function here scores each image on
its own head only (:func:`select_image_heads`). Keras averages them over the batch. That
makes the training metric the mean per-image score, like the evaluation in
``metrics.py``, instead of one score over all pixels of the batch.

They are registered as Keras serialisables so saved models reload by name once
this module is imported.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

_SPATIAL_AXES = (1, 2, 3)
# Laplace smoothing: keeps the scores defined (and equal to 1) when both the
# mask and the prediction are empty, and the gradient finite.
DEFAULT_SMOOTH = 1.0


def select_image_heads(y_true, y_pred):
    """``(B, H, W, 1)`` target and prediction of each image's own head.

    The head is the channel whose target is not ``IGNORED``; with one channel it is that.
    """
    if y_pred.shape[-1] == 1:
        return y_true, y_pred
    # Ignored heads are IGNORED (< 0) everywhere; the image's head holds {0, 1}.
    own_head = ops.cast(ops.max(y_true, axis=(1, 2), keepdims=True) >= 0.0, y_pred.dtype)
    return (ops.sum(y_true * own_head, axis=-1, keepdims=True),
            ops.sum(y_pred * own_head, axis=-1, keepdims=True))


def _as_float_pair(y_true, y_pred):
    """Cast both tensors to the prediction's float dtype (float32 output layer); each image's head."""
    y_pred = ops.convert_to_tensor(y_pred)
    return select_image_heads(ops.cast(y_true, y_pred.dtype), y_pred)


@keras.saving.register_keras_serializable(package="covid_imaging")
def dice_coefficient(y_true, y_pred, smooth: float = DEFAULT_SMOOTH):
    """Soft Dice ``(2|A.B| + s) / (|A| + |B| + s)`` per image."""
    y_true, y_pred = _as_float_pair(y_true, y_pred)
    intersection = ops.sum(y_true * y_pred, axis=_SPATIAL_AXES)
    total = ops.sum(y_true, axis=_SPATIAL_AXES) + ops.sum(y_pred, axis=_SPATIAL_AXES)
    return (2.0 * intersection + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package="covid_imaging")
def iou_coefficient(y_true, y_pred, smooth: float = DEFAULT_SMOOTH):
    """Soft IoU (Jaccard) ``(|A.B| + s) / (|A| + |B| - |A.B| + s)`` per image."""
    y_true, y_pred = _as_float_pair(y_true, y_pred)
    intersection = ops.sum(y_true * y_pred, axis=_SPATIAL_AXES)
    total = ops.sum(y_true, axis=_SPATIAL_AXES) + ops.sum(y_pred, axis=_SPATIAL_AXES)
    return (intersection + smooth) / (total - intersection + smooth)


@keras.saving.register_keras_serializable(package="covid_imaging")
def bce_loss(y_true, y_pred):
    """Binary cross-entropy averaged over the pixels of each image."""
    y_true, y_pred = _as_float_pair(y_true, y_pred)
    per_pixel = keras.losses.binary_crossentropy(y_true, y_pred)  # reduces the channel axis
    return ops.mean(per_pixel, axis=(1, 2))


@keras.saving.register_keras_serializable(package="covid_imaging")
def dice_loss(y_true, y_pred):
    """``1 - soft Dice`` per image."""
    return 1.0 - dice_coefficient(y_true, y_pred)


@keras.saving.register_keras_serializable(package="covid_imaging")
def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy plus Dice loss per image.

    BCE gives well-behaved per-pixel gradients early on; the Dice term counters
    the background/lung class imbalance.
    """
    return bce_loss(y_true, y_pred) + dice_loss(y_true, y_pred)


SEGMENTATION_LOSSES: dict[str, Callable] = {
    "bce": bce_loss,
    "dice": dice_loss,
    "bce_dice": bce_dice_loss,
}


def get_segmentation_loss(name: str) -> Callable:
    """Return the loss function registered as ``name`` ("bce", "dice" or "bce_dice").

    Raises:
        ValueError: for an unknown loss name.
    """
    try:
        return SEGMENTATION_LOSSES[name]
    except KeyError:
        raise ValueError(
            f"Unknown segmentation loss {name!r}; available: {sorted(SEGMENTATION_LOSSES)}."
        ) from None
