"""Reproducible image + mask augmentation as TensorFlow ops for ``tf.data.Dataset.map``.

Geometric ops (scale, rotation, shear) are composed into ONE affine matrix and
applied once to the image (bilinear) and once to the mask (nearest neighbour, so
it stays binary). Intensity ops (gamma, Gaussian blur, Gaussian noise,
salt-and-pepper) touch the image only, which is finally clipped to ``[0, 1]``.

Every random draw is a stateless op seeded from the per-element ``seed``, so the
same seed always gives the same augmentation, whatever the parallelism of the
input pipeline.

Parameters (all optional, merged over ``DEFAULT_AUGMENTATION_PARAMS``): each op
has a ``probability`` of being applied and a ``range`` ``[low, high]`` its
strength is drawn uniformly from:

- ``scale``: zoom factor (reference 0.8-1.1),
- ``rotation``: degrees, positive = counter-clockwise (default +-15, reference +-45),
- ``shear``: horizontal shear factor (reference +-0.2),
- ``gamma``: exponent of ``image ** gamma`` (reference 0.5-3),
- ``gaussian_blur``: sigma in pixels,
- ``gaussian_noise``: standard deviation on the ``[0, 1]`` intensity scale,
- ``salt_and_pepper``: fraction of pixels set to 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from covid_imaging.segmentation._params import merge_params

GEOMETRIC_OPS: tuple[str, ...] = ("scale", "rotation", "shear")
INTENSITY_OPS: tuple[str, ...] = ("gamma", "gaussian_blur", "gaussian_noise", "salt_and_pepper")

DEFAULT_AUGMENTATION_PARAMS: dict[str, dict[str, Any]] = {
    "scale": {"probability": 0.5, "range": [0.8, 1.1]},
    "rotation": {"probability": 0.5, "range": [-15.0, 15.0]},
    "shear": {"probability": 0.3, "range": [-0.2, 0.2]},
    "gamma": {"probability": 0.3, "range": [0.5, 3.0]},
    "gaussian_blur": {"probability": 0.2, "range": [0.1, 1.0]},
    "gaussian_noise": {"probability": 0.2, "range": [0.0, 0.03]},
    "salt_and_pepper": {"probability": 0.1, "range": [0.0, 0.01]},
}

# Value of each op's parameter that leaves the image unchanged.
_IDENTITY_VALUE: dict[str, float] = {"scale": 1.0, "rotation": 0.0, "shear": 0.0}


def resolve_augmentation_params(
    params: Mapping[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """Merge ``params`` over the defaults and validate probabilities and ranges.

    Raises:
        ValueError: for unknown ops/keys, probabilities outside ``[0, 1]``,
            reversed ranges, or non-positive scale / gamma / blur sigma.
    """
    resolved = merge_params(DEFAULT_AUGMENTATION_PARAMS, params, where="augmentation")
    for op_name, op_params in resolved.items():
        probability = float(op_params["probability"])
        low, high = (float(value) for value in op_params["range"])
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"augmentation.{op_name}.probability must be in [0, 1].")
        if low > high:
            raise ValueError(f"augmentation.{op_name}.range must be [low, high], got {low, high}.")
        if op_name in ("scale", "gamma", "gaussian_blur") and low <= 0.0:
            raise ValueError(f"augmentation.{op_name}.range must be positive.")
        if op_name in ("gaussian_noise", "salt_and_pepper") and low < 0.0:
            raise ValueError(f"augmentation.{op_name}.range must be non-negative.")
        op_params["probability"] = probability
        op_params["range"] = (low, high)
    return resolved


def _draw_strength(
    seed: tf.Tensor, probability: float, value_range: tuple[float, float]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Draw (whether to apply, strength in ``value_range``) from one stateless seed."""
    coin, position = tf.unstack(tf.random.stateless_uniform([2], seed=seed, dtype=tf.float32))
    low, high = value_range
    return coin < probability, low + position * (high - low)


def affine_matrix(
    height: tf.Tensor,
    width: tf.Tensor,
    scale: tf.Tensor,
    rotation_deg: tf.Tensor,
    shear: tf.Tensor,
) -> tf.Tensor:
    """3x3 matrix mapping input pixel ``(x, y, 1)`` to output pixel, about the image centre.

    Pixel centres sit at integer coordinates (the convention of
    ``ImageProjectiveTransformV3``), so the centre is ``((W-1)/2, (H-1)/2)``.
    The rotation is counter-clockwise as displayed (the y axis points down).
    """
    centre_x = (tf.cast(width, tf.float32) - 1.0) / 2.0
    centre_y = (tf.cast(height, tf.float32) - 1.0) / 2.0
    theta = rotation_deg * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    one, zero = tf.constant(1.0), tf.constant(0.0)

    def matrix(rows: list[list[tf.Tensor]]) -> tf.Tensor:
        return tf.stack([tf.stack([tf.cast(v, tf.float32) for v in row]) for row in rows])

    to_origin = matrix([[one, zero, -centre_x], [zero, one, -centre_y], [zero, zero, one]])
    from_origin = matrix([[one, zero, centre_x], [zero, one, centre_y], [zero, zero, one]])
    rotate = matrix([[cos, sin, zero], [-sin, cos, zero], [zero, zero, one]])
    shear_x = matrix([[one, shear, zero], [zero, one, zero], [zero, zero, one]])
    zoom = matrix([[scale, zero, zero], [zero, scale, zero], [zero, zero, one]])
    return from_origin @ rotate @ shear_x @ zoom @ to_origin


def _warp(image: tf.Tensor, forward_matrix: tf.Tensor, interpolation: str) -> tf.Tensor:
    """Apply ``forward_matrix`` to one ``(H, W, C)`` float image, filling outside with 0."""
    # The op wants the OUTPUT -> INPUT mapping, normalised so its last entry is 1.
    inverse = tf.linalg.inv(forward_matrix)
    transform = tf.reshape(inverse / inverse[2, 2], [9])[:8]
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )[0]
    warped.set_shape(image.shape)
    return warped


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, max_sigma: float) -> tf.Tensor:
    """Separable Gaussian blur of a ``(H, W, 1)`` image with reflect padding.

    The kernel radius ``ceil(3 * max_sigma)`` is static (fixed by the parameter
    range) while ``sigma`` itself may be a random tensor.
    """
    radius = max(1, math.ceil(3.0 * max_sigma))
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(offsets / sigma))
    weights = weights / tf.reduce_sum(weights)
    # Reflect padding avoids darkening the border as zero padding would.
    padded = tf.pad(
        image[tf.newaxis], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT"
    )
    blurred = tf.nn.conv2d(padded, tf.reshape(weights, [-1, 1, 1, 1]), strides=1, padding="VALID")
    blurred = tf.nn.conv2d(blurred, tf.reshape(weights, [1, -1, 1, 1]), strides=1, padding="VALID")
    return tf.ensure_shape(blurred[0], image.shape)


def _salt_and_pepper(image: tf.Tensor, amount: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Set a fraction ``amount`` of pixels to 0 (half) or 1 (half)."""
    uniform = tf.random.stateless_uniform(tf.shape(image), seed=seed, dtype=image.dtype)
    image = tf.where(uniform < amount / 2.0, tf.zeros_like(image), image)
    return tf.where(uniform > 1.0 - amount / 2.0, tf.ones_like(image), image)


def augment_image_and_mask(
    image: tf.Tensor,
    mask: tf.Tensor,
    seed: tf.Tensor,
    params: Mapping[str, Any] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Randomly augment one ``(H, W, 1)`` image in ``[0, 1]`` and its binary mask.

    Args:
        image: float32 image, values in ``[0, 1]``.
        mask: float32 mask with values in ``{0, 1}``.
        seed: int32/int64 tensor of shape ``(2,)``; the only source of randomness.
        params: per-op probabilities and ranges, see the module docstring.

    Returns:
        ``(image, mask)``: the image clipped to ``[0, 1]`` and the mask still in ``{0, 1}``.
    """
    resolved = resolve_augmentation_params(params)
    image = tf.convert_to_tensor(image, tf.float32)
    mask = tf.convert_to_tensor(mask, tf.float32)
    op_names = GEOMETRIC_OPS + INTENSITY_OPS
    # One independent seed pair per op (two rows each: strength draw, noise field).
    op_seeds = tf.random.experimental.stateless_split(seed, num=2 * len(op_names))
    seeds = {
        name: (op_seeds[2 * index], op_seeds[2 * index + 1]) for index, name in enumerate(op_names)
    }

    geometry = {}
    for name in GEOMETRIC_OPS:
        applied, value = _draw_strength(
            seeds[name][0], resolved[name]["probability"], resolved[name]["range"]
        )
        geometry[name] = tf.where(applied, value, _IDENTITY_VALUE[name])
    forward = affine_matrix(
        tf.shape(image)[0],
        tf.shape(image)[1],
        geometry["scale"],
        geometry["rotation"],
        geometry["shear"],
    )
    image = _warp(image, forward, "BILINEAR")
    mask = _warp(mask, forward, "NEAREST")

    def maybe(name: str, transform, current: tf.Tensor) -> tf.Tensor:
        """Apply ``transform(current, strength, noise_seed)`` with the op's probability."""
        applied, value = _draw_strength(
            seeds[name][0], resolved[name]["probability"], resolved[name]["range"]
        )
        return tf.cond(applied, lambda: transform(current, value, seeds[name][1]), lambda: current)

    max_blur_sigma = resolved["gaussian_blur"]["range"][1]
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = maybe("gamma", lambda img, gamma, _: tf.pow(img, gamma), image)
    image = maybe(
        "gaussian_blur", lambda img, sigma, _: gaussian_blur(img, sigma, max_blur_sigma), image
    )
    image = maybe(
        "gaussian_noise",
        lambda img, std, noise_seed: (
            img + std * tf.random.stateless_normal(tf.shape(img), seed=noise_seed)
        ),
        image,
    )
    image = maybe("salt_and_pepper", _salt_and_pepper, image)
    return tf.clip_by_value(image, 0.0, 1.0), mask
