"""``tf.data`` input pipelines for segmentation: streamed PNGs and in-memory arrays.

Images are read lazily from disk, so the training set never has to fit in
memory; decoding, resizing and augmentation run in parallel with training
(``num_parallel_calls`` / ``prefetch`` with ``AUTOTUNE``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from covid_imaging.segmentation.augmentation import (
    augment_image_and_mask,
    resolve_augmentation_params,
)
from covid_imaging.segmentation.conventions import IGNORED
from covid_imaging.training.inputs import resize_to_model_input

AUTOTUNE = tf.data.AUTOTUNE
# Masks are stored as {0, 255}; anything above the midpoint is lung.
MASK_THRESHOLD_8BIT = 127


def _as_path_strings(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Turn ``str`` / ``Path`` objects into the plain strings ``tf.io`` expects."""
    return [os.fspath(path) for path in paths]


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Read a PNG as gray, resize it bilinearly to ``image_size`` and scale to ``[0, 1]``."""
    image = tf.io.decode_png(tf.io.read_file(path), channels=1, dtype=tf.uint8)
    return resize_to_model_input(image, image_size)


def load_mask(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Read a PNG mask, resize it with nearest neighbour and binarise it to ``{0., 1.}``."""
    mask = tf.io.decode_png(tf.io.read_file(path), channels=1, dtype=tf.uint8)
    # Nearest neighbour keeps the mask binary; bilinear would invent partial labels.
    mask = tf.image.resize(mask, [image_size, image_size], method="nearest")
    return tf.cast(mask > MASK_THRESHOLD_8BIT, tf.float32)


def make_segmentation_dataset(
    image_paths: Sequence[str | os.PathLike],
    mask_paths: Sequence[str | os.PathLike],
    image_size: int,
    batch_size: int,
    shuffle: bool,
    augment_params: Mapping[str, Any] | None,
    seed: int,
    heads: Sequence[int] | None = None,
    n_heads: int = 1,
) -> tf.data.Dataset:
    """Stream ``(image, mask)`` batches, each ``(B, image_size, image_size, 1)`` float32.

    Args:
        image_paths: 8-bit PNG images (colour files are converted to gray).
        mask_paths: the matching PNG masks, same order as ``image_paths``.
        image_size: side of the square network input.
        batch_size: images per batch; the last batch may be smaller.
        shuffle: reshuffle the file order every epoch (training).
        augment_params: augmentation parameters (see ``augmentation.py``; ``{}``
            means all defaults), or ``None`` for no augmentation (validation / test).
        seed: seeds the shuffle and the per-element augmentation seeds, so a run
            is reproducible while every epoch still sees new augmentations.
        heads, n_heads: for a model with ``n_heads`` > 1 mask-convention heads, each
            image's head; its target becomes ``(image_size, image_size, n_heads)``, the
            mask in its own head and ``IGNORED`` in the others (after augmentation).
    """
    images = _as_path_strings(image_paths)
    masks = _as_path_strings(mask_paths)
    if len(images) != len(masks):
        raise ValueError(f"Got {len(images)} images but {len(masks)} masks.")
    if not images:
        raise ValueError("Cannot build a segmentation dataset from zero images.")

    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    if n_heads > 1 and (heads is None or len(heads) != len(images)):
        raise ValueError(f"{n_heads} mask-convention heads need one head index per image ({len(images)}).")
    head_ids = np.asarray(heads if n_heads > 1 else np.zeros(len(images)), np.int32)
    dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.from_tensor_slices(head_ids)))
    if shuffle:
        # Shuffling paths (not decoded images) keeps the buffer tiny.
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(
        lambda paths, head: (
            load_image(paths[0], image_size),
            load_mask(paths[1], image_size),
            head,
        ),
        num_parallel_calls=AUTOTUNE,
    )
    if augment_params is not None:
        resolved = resolve_augmentation_params(augment_params)
        # A fresh, seeded stream of per-element seeds each epoch.
        element_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, element_seeds)).map(
            lambda triple, element_seed: (
                *augment_image_and_mask(triple[0], triple[1], element_seed, resolved), triple[2]
            ),
            num_parallel_calls=AUTOTUNE,
        )
    if n_heads > 1:
        dataset = dataset.map(
            lambda image, mask, head: (image, head_targets(mask, head, n_heads)), num_parallel_calls=AUTOTUNE
        )
    else:
        dataset = dataset.map(lambda image, mask, head: (image, mask), num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)


def head_targets(mask: tf.Tensor, head: tf.Tensor, n_heads: int) -> tf.Tensor:
    """``(H, W, n_heads)`` target: ``mask`` in channel ``head``, ``IGNORED`` in the others."""
    own = tf.reshape(tf.one_hot(head, n_heads) > 0.5, [1, 1, n_heads])
    return tf.where(own, mask, tf.constant(IGNORED, mask.dtype))


def make_inference_dataset(
    image_paths: Sequence[str | os.PathLike], image_size: int, batch_size: int
) -> tf.data.Dataset:
    """Stream image-only batches ``(B, image_size, image_size, 1)`` in file order."""
    images = _as_path_strings(image_paths)
    if not images:
        raise ValueError("Cannot build an inference dataset from zero images.")
    dataset = tf.data.Dataset.from_tensor_slices(images)
    dataset = dataset.map(lambda path: load_image(path, image_size), num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)


def _with_channel_axis(array: np.ndarray) -> np.ndarray:
    """Accept ``(N, H, W)`` or ``(N, H, W, 1)`` and return ``(N, H, W, 1)``."""
    if array.ndim == 3:
        return array[..., np.newaxis]
    if array.ndim == 4 and array.shape[-1] == 1:
        return array
    raise ValueError(f"Expected (N, H, W) or (N, H, W, 1) arrays, got shape {array.shape}.")


def make_in_memory_dataset(
    images: np.ndarray, masks: np.ndarray, batch_size: int
) -> tf.data.Dataset:
    """Batch already-loaded arrays, as a baseline for the input-pipeline benchmark.

    Integer images are taken as 8-bit and divided by 255, float images are used
    as given; integer masks are binarised at 127 and float masks at 0.5.
    """
    images = _with_channel_axis(np.asarray(images))
    masks = _with_channel_axis(np.asarray(masks))
    if images.shape != masks.shape:
        raise ValueError(f"Image shape {images.shape} differs from mask shape {masks.shape}.")
    is_integer = np.issubdtype(images.dtype, np.integer)
    unit_images = images.astype(np.float32) / 255.0 if is_integer else images.astype(np.float32)
    mask_threshold = MASK_THRESHOLD_8BIT if np.issubdtype(masks.dtype, np.integer) else 0.5
    binary_masks = (masks > mask_threshold).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((unit_images, binary_masks))
    return dataset.batch(batch_size).prefetch(AUTOTUNE)
