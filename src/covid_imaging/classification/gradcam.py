"""Grad-CAM, gradient saliency and heatmap/lung-mask diagnostics.

Gradients are taken of the pre-softmax class score (the logit), as in the Grad-CAM
paper: softmax probabilities saturate and give vanishing maps on confident models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import keras
import matplotlib
import numpy as np
import tensorflow as tf

from covid_imaging.classification.transfer import iter_leaf_layers

_CONV_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Conv2DTranspose,
)
# Layers that shrink or blank the map: Grad-CAM should look at what comes before them.
_NOT_CAM_LAYERS = (
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.InputLayer,
)

Forward = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


# ------------------------------------------------------------ layer discovery


def _output_rank(layer: keras.layers.Layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # layer never called in a graph
        return None


def _leaves_with_container(
    model: keras.Model,
) -> list[tuple[keras.Model | None, keras.layers.Layer]]:
    """Leaf layers paired with the top-level nested model holding them (None: top level)."""
    pairs: list[tuple[keras.Model | None, keras.layers.Layer]] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            pairs.extend((layer, leaf) for leaf in iter_leaf_layers(layer))
        else:
            pairs.append((None, layer))
    return pairs


def find_gradcam_layer(
    model: keras.Model, layer_name: str | None = None
) -> tuple[keras.Model | None, keras.layers.Layer]:
    """Target layer for Grad-CAM and the nested model containing it (None: top level).

    Without ``layer_name``: the last layer with a 4-D output at or after the last
    convolution, skipping pooling/dropout (e.g. ``conv5_block3_out`` in ResNet50).
    """
    pairs = _leaves_with_container(model)
    if layer_name is not None:
        for container, layer in pairs:
            if layer.name == layer_name:
                return container, layer
        raise ValueError(f"Layer {layer_name!r} not found in model {model.name!r}")
    conv_positions = [i for i, (_, layer) in enumerate(pairs) if isinstance(layer, _CONV_LAYERS)]
    if not conv_positions:
        raise ValueError(f"Model {model.name!r} has no convolution layer for Grad-CAM")
    candidates = [
        (container, layer)
        for container, layer in pairs[conv_positions[-1] :]
        if not isinstance(layer, _NOT_CAM_LAYERS) and _output_rank(layer) == 4
    ]
    return candidates[-1]


# ---------------------------------------------------------------- forward passes


def _logits_from_head(head: keras.layers.Layer) -> Callable[[tf.Tensor], tf.Tensor] | None:
    """Map the head's input to pre-softmax scores, or None if the head is not softmax."""
    if getattr(head, "activation", None) is not keras.activations.softmax:
        return None
    if isinstance(head, keras.layers.Dense):
        return lambda features: (
            tf.matmul(features, head.kernel) + (head.bias if head.use_bias else 0.0)
        )
    if isinstance(head, keras.layers.Activation):
        return lambda features: features
    return None


def _score_function(
    model: keras.Model,
) -> tuple[keras.KerasTensor, Callable[[tf.Tensor], tf.Tensor]]:
    """The tensor to fetch for scoring and how to turn it into class logits."""
    head = model.layers[-1]
    to_logits = _logits_from_head(head)
    if to_logits is None:  # unknown head: log-probabilities are the next best thing
        return model.outputs[0], lambda probs: tf.math.log(tf.maximum(probs, 1e-12))
    return head.input, to_logits


def _top_level_forward(model: keras.Model, target: keras.layers.Layer) -> Forward:
    score_tensor, to_logits = _score_function(model)
    grad_model = keras.Model(model.input, [target.output, score_tensor])

    def forward(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        activation, score_input = grad_model(images, training=False)
        return activation, to_logits(score_input)

    return forward


def _nested_forward(
    model: keras.Model, container: keras.Model, target: keras.layers.Layer
) -> Forward:
    """Walk a chain-structured outer model, splitting the nested backbone at ``target``."""
    inner = keras.Model(container.input, [target.output, container.output])
    head = model.layers[-1]
    to_logits = _logits_from_head(head)
    chain = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    body = chain[:-1] if to_logits is not None else chain
    finish = to_logits or (lambda probs: tf.math.log(tf.maximum(probs, 1e-12)))

    def forward(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, activation = images, None
        for layer in body:
            if layer is container:
                activation, x = inner(x, training=False)
            else:
                x = layer(x, training=False)
        return activation, finish(x)

    # Layer-by-layer replay is only valid for a single chain; check it reproduces the model.
    probe = tf.random.uniform((1, *model.inputs[0].shape[1:]), seed=0)
    try:
        _, replayed_logits = forward(probe)
        reproduced = np.allclose(
            tf.nn.softmax(replayed_logits).numpy(),
            np.asarray(model(probe, training=False)),
            atol=1e-4,
        )
    except (TypeError, ValueError):  # a multi-input layer cannot be replayed on one tensor
        reproduced = False
    if not reproduced:
        raise ValueError(
            f"Grad-CAM on layer {target.name!r} inside nested model {container.name!r} "
            "needs the outer model to be a simple chain of single-input layers."
        )
    return forward


def _broadcast_class_indices(
    class_indices: Sequence[int] | np.ndarray | int | None, n_images: int
) -> np.ndarray | None:
    if class_indices is None:
        return None
    return np.broadcast_to(np.asarray(class_indices, dtype=np.int32), (n_images,))


def _chosen_scores(logits: tf.Tensor, class_indices: np.ndarray | None) -> tf.Tensor:
    """Logit of the requested class per image (the predicted class when None)."""
    if class_indices is None:
        indices = tf.argmax(logits, axis=1, output_type=tf.int32)
    else:
        indices = tf.constant(class_indices, dtype=tf.int32)
    return tf.gather(logits, indices, axis=1, batch_dims=1)


def _normalise_per_image(maps: tf.Tensor) -> tf.Tensor:
    """Scale each (N, H, W) map to [0, 1] by its maximum (all-zero maps stay zero)."""
    peak = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return tf.where(peak > 0, maps / tf.where(peak > 0, peak, 1.0), tf.zeros_like(maps))


def _as_batch(images: np.ndarray) -> tf.Tensor:
    array = np.asarray(images, dtype=np.float32)
    return tf.constant(array[None] if array.ndim == 3 else array)


# ------------------------------------------------------------------ public API


def grad_cam(
    model: keras.Model,
    images: np.ndarray,
    class_indices: Sequence[int] | np.ndarray | int | None = None,
    layer_name: str | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Grad-CAM heatmaps ``(N, H, W)`` in [0, 1] at the input resolution.

    ``class_indices`` default to the predicted class. ``layer_name`` may name a layer
    inside a nested backbone (e.g. ``"conv5_block3_out"`` of ResNet50).
    """
    batch = _as_batch(images)
    container, target = find_gradcam_layer(model, layer_name)
    forward = (
        _top_level_forward(model, target)
        if container is None
        else _nested_forward(model, container, target)
    )
    height, width = batch.shape[1:3]
    all_indices = _broadcast_class_indices(class_indices, batch.shape[0])
    heatmaps = []
    for start in range(0, batch.shape[0], batch_size):
        chunk = batch[start : start + batch_size]
        with tf.GradientTape() as tape:
            activation, logits = forward(chunk)
            indices = None if all_indices is None else all_indices[start : start + batch_size]
            scores = _chosen_scores(logits, indices)
        gradients = tape.gradient(scores, activation)
        channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(activation * channel_weights, axis=-1))
        cam = _normalise_per_image(cam)
        cam = tf.image.resize(cam[..., None], (height, width), method="bilinear")[..., 0]
        heatmaps.append(tf.clip_by_value(cam, 0.0, 1.0).numpy())
    return np.concatenate(heatmaps).astype(np.float32)


def saliency_map(
    model: keras.Model,
    images: np.ndarray,
    class_indices: Sequence[int] | np.ndarray | int | None = None,
) -> np.ndarray:
    """Vanilla gradient saliency ``(N, H, W)`` in [0, 1]: |d logit / d pixel|, max over channels."""
    batch = tf.Variable(_as_batch(images))
    score_tensor, to_logits = _score_function(model)
    score_model = keras.Model(model.input, score_tensor)
    with tf.GradientTape() as tape:
        logits = to_logits(score_model(batch, training=False))
        scores = _chosen_scores(logits, _broadcast_class_indices(class_indices, batch.shape[0]))
    gradients = tf.reduce_max(tf.abs(tape.gradient(scores, batch)), axis=-1)
    return _normalise_per_image(gradients).numpy().astype(np.float32)


def _to_rgb_float(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    array = (
        array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    return np.clip(array, 0.0, 1.0)


def _resize_to(array: np.ndarray, shape: tuple[int, int], interpolation: int) -> np.ndarray:
    if array.shape[:2] == shape:
        return array
    return cv2.resize(array, (shape[1], shape[0]), interpolation=interpolation)


def overlay_heatmap(
    image: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.4,
    colormap: str = "jet",
) -> np.ndarray:
    """Blend a [0, 1] heatmap (colour-mapped) over an image; returns RGB uint8 (H, W, 3).

    ``image`` may be gray or RGB, uint8 or float in [0, 1]; the heatmap is resized to it.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    rgb = _to_rgb_float(image)
    heat = _resize_to(np.asarray(heatmap, dtype=np.float32), rgb.shape[:2], cv2.INTER_LINEAR)
    coloured = matplotlib.colormaps[colormap](np.clip(heat, 0.0, 1.0))[..., :3]
    blended = (1.0 - alpha) * rgb + alpha * coloured
    return np.round(np.clip(blended, 0.0, 1.0) * 255).astype(np.uint8)


def heatmap_mass_inside_mask(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share (0..1) of the heatmap's total mass lying inside the (lung) mask.

    The mask is binarised (> 0) and resized (nearest) to the heatmap if needed.
    Returns NaN for an all-zero heatmap.
    """
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {heat.shape}")
    binary = np.asarray(mask)
    if binary.ndim == 3:
        binary = binary[..., 0]
    binary = _resize_to((binary > 0).astype(np.uint8), heat.shape, cv2.INTER_NEAREST) > 0
    total = heat.sum()
    if total <= 0:
        return float("nan")
    return float(heat[binary].sum() / total)
