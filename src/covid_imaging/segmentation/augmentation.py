"""Reproducible image + mask augmentation as TensorFlow ops for ``tf.data.Dataset.map``.

Geometric ops (scale, aspect, translation, rotation, shear) are composed into ONE
affine matrix and applied once to the image (bilinear) and once to the mask
(nearest neighbour, so it stays binary). Then, in this order: a synthetic
**opacity** is pasted inside the (warped) lung mask while the mask keeps the whole
lung, so the model learns that consolidated, ground-glass or effusion-filled lung is
still lung; **borders** (black or white bands, as on collimated or letterboxed films)
blank the image and the mask at the edges; the intensity ops (gamma, contrast,
Gaussian blur, Gaussian noise, salt-and-pepper) touch the image only, which is
finally clipped to ``[0, 1]``.

Every random draw is a stateless op seeded from the per-element ``seed``, so the
same seed always gives the same augmentation, whatever the parallelism of the
input pipeline.

Parameters (all optional, merged over ``DEFAULT_AUGMENTATION_PARAMS``): each op
has a ``probability`` of being applied and a ``range`` ``[low, high]`` its
strength is drawn uniformly from:

- ``scale``: zoom factor (reference 0.8-1.1; below 1 the image shrinks inside black borders),
- ``aspect``: width/height stretch factor (sources squash films of other aspect ratios),
- ``translation``: shift as a fraction of the side, drawn for x and y,
- ``rotation``: degrees, positive = counter-clockwise (default +-15, reference +-45),
- ``shear``: horizontal shear factor (reference +-0.2),
- ``gamma``: exponent of ``image ** gamma`` (reference 0.5-3),
- ``gaussian_blur``: sigma in pixels,
- ``gaussian_noise``: standard deviation on the ``[0, 1]`` intensity scale,
- ``salt_and_pepper``: fraction of pixels set to 0 or 1,
- ``contrast``: factor scaling intensities about the image mean,
- ``opacity``: strength (blend weight towards a bright opacity) of one synthetic
  opacity of a random kind (``OPACITY_KINDS``), see ``paste_opacity``,
- ``border``: largest band width as a fraction of the side; each side gets a band
  with probability 1/2, black (or white, 1 in 5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from covid_imaging.segmentation._params import merge_params

GEOMETRIC_OPS: tuple[str, ...] = ("scale", "aspect", "translation", "rotation", "shear")
LUNG_OPS: tuple[str, ...] = ("opacity",)
BORDER_OPS: tuple[str, ...] = ("border",)
INTENSITY_OPS: tuple[str, ...] = ("gamma", "contrast", "gaussian_blur", "gaussian_noise", "salt_and_pepper")
ALL_OPS: tuple[str, ...] = GEOMETRIC_OPS + LUNG_OPS + BORDER_OPS + INTENSITY_OPS

# Off unless a parameters file switches them on: the library default is the plain
# reference set; conf/base/parameters/segmentation.yml holds the robust training set.
DEFAULT_AUGMENTATION_PARAMS: dict[str, dict[str, Any]] = {
    "scale": {"probability": 0.5, "range": [0.8, 1.1]},
    "aspect": {"probability": 0.0, "range": [0.8, 1.25]},
    "translation": {"probability": 0.0, "range": [-0.05, 0.05]},
    "rotation": {"probability": 0.5, "range": [-15.0, 15.0]},
    "shear": {"probability": 0.3, "range": [-0.2, 0.2]},
    "opacity": {"probability": 0.0, "range": [0.3, 0.9]},
    "border": {"probability": 0.0, "range": [0.0, 0.12]},
    "gamma": {"probability": 0.3, "range": [0.5, 3.0]},
    "contrast": {"probability": 0.0, "range": [0.7, 1.3]},
    "gaussian_blur": {"probability": 0.2, "range": [0.1, 1.0]},
    "gaussian_noise": {"probability": 0.2, "range": [0.0, 0.03]},
    "salt_and_pepper": {"probability": 0.1, "range": [0.0, 0.01]},
}

# Value of each op's parameter that leaves the image unchanged.
_IDENTITY_VALUE: dict[str, float] = {"scale": 1.0, "aspect": 1.0, "translation": 0.0, "rotation": 0.0, "shear": 0.0}

# Synthetic opacities: patchy consolidation, diffuse ground glass, a pleural effusion
# filling the lower zone of one or both lungs up to a meniscus.
OPACITY_KINDS: tuple[str, ...] = ("consolidation", "ground_glass", "effusion")


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
        if op_name in ("scale", "aspect", "gamma", "gaussian_blur", "contrast") and low <= 0.0:
            raise ValueError(f"augmentation.{op_name}.range must be positive.")
        if op_name in ("gaussian_noise", "salt_and_pepper", "opacity", "border") and low < 0.0:
            raise ValueError(f"augmentation.{op_name}.range must be non-negative.")
        if op_name in ("opacity",) and high > 1.0:
            raise ValueError(f"augmentation.{op_name}.range must lie in [0, 1].")
        if op_name == "border" and high >= 0.5:
            raise ValueError("augmentation.border.range must stay below 0.5 (half the side).")
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
    aspect: tf.Tensor | float = 1.0,
    shift_x: tf.Tensor | float = 0.0,
    shift_y: tf.Tensor | float = 0.0,
) -> tf.Tensor:
    """3x3 matrix mapping input pixel ``(x, y, 1)`` to output pixel, about the image centre.

    Pixel centres sit at integer coordinates (the convention of
    ``ImageProjectiveTransformV3``), so the centre is ``((W-1)/2, (H-1)/2)``.
    The rotation is counter-clockwise as displayed (the y axis points down);
    ``aspect`` stretches x by ``sqrt(aspect)`` and y by ``1 / sqrt(aspect)``;
    ``shift_x`` / ``shift_y`` move the result by that fraction of the width / height.
    """
    centre_x = (tf.cast(width, tf.float32) - 1.0) / 2.0
    centre_y = (tf.cast(height, tf.float32) - 1.0) / 2.0
    theta = rotation_deg * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    one, zero = tf.constant(1.0), tf.constant(0.0)

    def matrix(rows: list[list[tf.Tensor]]) -> tf.Tensor:
        return tf.stack([tf.stack([tf.cast(v, tf.float32) for v in row]) for row in rows])

    to_origin = matrix([[one, zero, -centre_x], [zero, one, -centre_y], [zero, zero, one]])
    offset_x = centre_x + tf.cast(shift_x, tf.float32) * tf.cast(width, tf.float32)
    offset_y = centre_y + tf.cast(shift_y, tf.float32) * tf.cast(height, tf.float32)
    from_origin = matrix([[one, zero, offset_x], [zero, one, offset_y], [zero, zero, one]])
    rotate = matrix([[cos, sin, zero], [-sin, cos, zero], [zero, zero, one]])
    shear_x = matrix([[one, shear, zero], [zero, one, zero], [zero, zero, one]])
    root_aspect = tf.sqrt(tf.cast(aspect, tf.float32))
    zoom = matrix([[scale * root_aspect, zero, zero], [zero, scale / root_aspect, zero], [zero, zero, one]])
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


def _smooth_field(shape: tf.Tensor, grid: int, seed: tf.Tensor) -> tf.Tensor:
    """A smooth random field in ``[0, 1]`` of ``shape`` (H, W): coarse noise, upsampled bicubically."""
    coarse = tf.random.stateless_normal([grid, grid, 1], seed=seed)
    field = tf.image.resize(coarse, shape, method="bicubic")[..., 0]
    low, high = tf.reduce_min(field), tf.reduce_max(field)
    return (field - low) / tf.maximum(high - low, 1e-6)


def opacity_field(mask: tf.Tensor, kind: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Where (weight in ``[0, 1]``) a synthetic opacity of ``kind`` covers the lung ``mask``.

    ``kind`` indexes ``OPACITY_KINDS``. The field is multiplied by the mask, so nothing
    outside the lung ever changes.
    """
    mask2d = tf.convert_to_tensor(mask, tf.float32)[..., 0]
    shape = tf.shape(mask2d)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    draws = tf.random.stateless_uniform([4], seed=seeds[0])

    def consolidation() -> tf.Tensor:
        # Patches: the top part of a smooth field, 20-60 % of the lung.
        field = _smooth_field(shape, 6, seeds[1])
        threshold = 0.4 + 0.3 * draws[0]
        return tf.clip_by_value((field - threshold) / (1.0 - threshold) * 3.0, 0.0, 1.0)

    def ground_glass() -> tf.Tensor:
        # Diffuse haze over most of the lung, with fine texture.
        haze = 0.5 + 0.5 * _smooth_field(shape, 4, seeds[1])
        texture = 0.7 + 0.3 * _smooth_field(shape, 24, seeds[2])
        return 0.6 * haze * texture

    def effusion() -> tf.Tensor:
        # Dense lower zone up to a meniscus that rises laterally, one or both lungs.
        row_has_lung = tf.reduce_any(mask2d > 0.5, axis=1)
        row_index = tf.range(height)
        # No lung at all: any level will do, the field is multiplied by the empty mask.
        top = tf.minimum(tf.reduce_min(tf.where(row_has_lung, row_index, height)), height - 1.0)
        bottom = tf.maximum(tf.reduce_max(tf.where(row_has_lung, row_index, -1.0)), top)
        level = bottom - (0.15 + 0.4 * draws[0]) * (bottom - top)
        y = tf.range(height)[:, tf.newaxis]
        x = tf.range(width)[tf.newaxis, :]
        lateral = tf.abs(x - (width - 1.0) / 2.0) / width  # 0 at the mediastinum, 0.5 at the edge
        meniscus = level - 0.4 * draws[1] * lateral * (bottom - top)
        field = tf.sigmoid((y - meniscus) / (0.02 * height))
        side = draws[2]  # left only, right only, or both
        left = tf.cast(x < width / 2.0, tf.float32)
        choice = tf.where(side < 1.0 / 3.0, left, tf.where(side < 2.0 / 3.0, 1.0 - left, tf.ones_like(left)))
        return field * choice

    field = tf.switch_case(tf.cast(kind, tf.int32), [consolidation, ground_glass, effusion])
    return (field * mask2d)[..., tf.newaxis]


def paste_opacity(
    image: tf.Tensor, mask: tf.Tensor, kind: tf.Tensor | int, strength: tf.Tensor | float, seed: tf.Tensor
) -> tf.Tensor:
    """Blend a bright synthetic opacity into ``image`` inside the lung ``mask`` only.

    The opacity pulls the lung towards the brightness of soft tissue (the 90th
    percentile of the image outside the lung), weighted by ``strength`` in ``[0, 1]``
    and the field of ``opacity_field``. Pixels outside the mask are returned unchanged.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    mask = tf.convert_to_tensor(mask, tf.float32)
    outside = tf.boolean_mask(image, mask < 0.5)
    sorted_outside = tf.sort(tf.reshape(outside, [-1]))
    count = tf.size(sorted_outside)
    tissue = tf.cond(
        count > 0,
        lambda: sorted_outside[tf.cast(0.9 * tf.cast(count - 1, tf.float32), tf.int32)],
        lambda: tf.constant(0.8),
    )
    target = tf.maximum(tissue, 0.6)
    weight = tf.cast(strength, tf.float32) * opacity_field(mask, kind, seed)
    return image * (1.0 - weight) + target * weight


def add_borders(image: tf.Tensor, mask: tf.Tensor, max_fraction: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Blank bands of up to ``max_fraction`` of the side at random edges (image and mask)."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    draws = tf.random.stateless_uniform([9], seed=seed)
    present = tf.cast(draws[:4] < 0.5, tf.float32)
    sizes = present * draws[4:8] * max_fraction
    y = tf.range(height)[:, tf.newaxis, tf.newaxis]
    x = tf.range(width)[tf.newaxis, :, tf.newaxis]
    band = (
        (y < sizes[0] * height)
        | (y >= height - sizes[1] * height)
        | (x < sizes[2] * width)
        | (x >= width - sizes[3] * width)
    )
    fill = tf.where(draws[8] < 0.2, 1.0, 0.0)
    return tf.where(band, fill, image), tf.where(band, 0.0, mask)


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
    # One independent seed pair per op (two rows each: strength draw, noise field).
    op_seeds = tf.random.experimental.stateless_split(seed, num=2 * len(ALL_OPS))
    seeds = {name: (op_seeds[2 * index], op_seeds[2 * index + 1]) for index, name in enumerate(ALL_OPS)}

    geometry = {}
    for name in GEOMETRIC_OPS:
        applied, value = _draw_strength(seeds[name][0], resolved[name]["probability"], resolved[name]["range"])
        geometry[name] = tf.where(applied, value, _IDENTITY_VALUE[name])
    # The y shift is a second draw from the translation op's range.
    shift_low, shift_high = resolved["translation"]["range"]
    shift_y = shift_low + tf.random.stateless_uniform([], seed=seeds["translation"][1]) * (shift_high - shift_low)
    shift_y = tf.where(geometry["translation"] != 0.0, shift_y, 0.0)
    forward = affine_matrix(
        tf.shape(image)[0],
        tf.shape(image)[1],
        geometry["scale"],
        geometry["rotation"],
        geometry["shear"],
        aspect=geometry["aspect"],
        shift_x=geometry["translation"],
        shift_y=shift_y,
    )
    image = _warp(image, forward, "BILINEAR")
    mask = _warp(mask, forward, "NEAREST")

    def maybe(name: str, transform, current):
        """Apply ``transform(current, strength, noise_seed)`` with the op's probability."""
        applied, value = _draw_strength(seeds[name][0], resolved[name]["probability"], resolved[name]["range"])
        return tf.cond(applied, lambda: transform(current, value, seeds[name][1]), lambda: current)

    image = tf.clip_by_value(image, 0.0, 1.0)

    def opacity(img: tf.Tensor, strength: tf.Tensor, noise_seed: tf.Tensor) -> tf.Tensor:
        kind_seed, field_seed = tf.unstack(tf.random.experimental.stateless_split(noise_seed, num=2))
        kind = tf.random.stateless_uniform([], seed=kind_seed, minval=0, maxval=len(OPACITY_KINDS), dtype=tf.int32)
        return paste_opacity(img, mask, kind, strength, field_seed)

    image = maybe("opacity", opacity, image)
    image, mask = maybe(
        "border", lambda pair, fraction, noise_seed: add_borders(pair[0], pair[1], fraction, noise_seed), (image, mask)
    )
    max_blur_sigma = resolved["gaussian_blur"]["range"][1]
    image = maybe("gamma", lambda img, gamma, _: tf.pow(tf.maximum(img, 0.0), gamma), image)
    image = maybe(
        "contrast", lambda img, factor, _: (img - tf.reduce_mean(img)) * factor + tf.reduce_mean(img), image
    )
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = maybe("gaussian_blur", lambda img, sigma, _: gaussian_blur(img, sigma, max_blur_sigma), image)
    image = maybe(
        "gaussian_noise",
        lambda img, std, noise_seed: (img + std * tf.random.stateless_normal(tf.shape(img), seed=noise_seed)),
        image,
    )
    image = maybe("salt_and_pepper", _salt_and_pepper, image)
    mask = tf.ensure_shape(mask, image.shape)
    return tf.clip_by_value(image, 0.0, 1.0), mask
