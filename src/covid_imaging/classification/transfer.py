"""Weight transfer, freezing and head replacement for Keras classifiers.

Freezing works on *leaf* layers (layers that are not themselves models): a nested
backbone such as ResNet50 stays ``trainable=True`` as a container and its individual
layers are switched, because a frozen container hides all of its children's weights
from the optimiser. Recompile (``train_classifier`` does) after changing trainability.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import keras

CLASSIFIER_LAYER_NAME = "classifier"


def iter_leaf_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Yield the layers of ``model`` in order, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from iter_leaf_layers(layer)
        else:
            yield layer


def _iter_layers_with_descendants(
    model: keras.Model,
) -> Iterator[tuple[keras.layers.Layer, list[keras.layers.Layer]]]:
    """Yield every (possibly nested) layer with the leaf layers it covers."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield layer, list(iter_leaf_layers(layer))
            yield from _iter_layers_with_descendants(layer)
        else:
            yield layer, [layer]


def find_backbone(model: keras.Model) -> keras.Model | None:
    """The nested model with the most layers (e.g. the ResNet50 base), or None."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return max(nested, key=lambda m: len(m.layers), default=None)


def _set_leaf_trainability(
    model: keras.Model, trainable_leaves: Iterable[keras.layers.Layer]
) -> keras.Model:
    keep = {id(layer) for layer in trainable_leaves}
    model.trainable = True  # containers on; leaves decide below
    for leaf in iter_leaf_layers(model):
        leaf.trainable = id(leaf) in keep
    return model


def _without_batchnorm(layers: Iterable[keras.layers.Layer]) -> list[keras.layers.Layer]:
    return [layer for layer in layers if not isinstance(layer, keras.layers.BatchNormalization)]


def transfer_weights(
    source: keras.Model,
    target: keras.Model,
    skip_layers: Sequence[str] = (CLASSIFIER_LAYER_NAME,),
    by_name: bool = True,
) -> list[str]:
    """Copy weights from ``source`` into ``target`` for every top-level layer but the head.

    Layers are matched by name (builders use deterministic names) or, with
    ``by_name=False``, by the order of weight-carrying layers. A nested backbone is
    copied as one unit. Returns the names of the target layers that received weights.
    Raises ``ValueError`` when a layer is missing from ``source`` or shapes differ.
    """
    skip = set(skip_layers)
    target_layers = [layer for layer in target.layers if layer.weights and layer.name not in skip]
    if by_name:
        source_by_name = {layer.name: layer for layer in source.layers}
        missing = [layer.name for layer in target_layers if layer.name not in source_by_name]
        if missing:
            raise ValueError(f"Layers missing from source model {source.name!r}: {missing}")
        pairs = [(source_by_name[layer.name], layer) for layer in target_layers]
    else:
        source_layers = [
            layer for layer in source.layers if layer.weights and layer.name not in skip
        ]
        if len(source_layers) != len(target_layers):
            raise ValueError(
                f"Source has {len(source_layers)} weight-carrying layers to copy, "
                f"target has {len(target_layers)}"
            )
        pairs = list(zip(source_layers, target_layers, strict=True))

    for source_layer, target_layer in pairs:
        source_shapes = [tuple(w.shape) for w in source_layer.weights]
        target_shapes = [tuple(w.shape) for w in target_layer.weights]
        if source_shapes != target_shapes:
            raise ValueError(
                f"Weight shape mismatch for layer {target_layer.name!r} "
                f"(source {source_layer.name!r}): {source_shapes} vs {target_shapes}"
            )
    # Copy only after every pair has been checked so a failure leaves target untouched.
    for source_layer, target_layer in pairs:
        target_layer.set_weights(source_layer.get_weights())
    return [target_layer.name for _, target_layer in pairs]


def freeze_all_but(model: keras.Model, trainable_layer_names: Iterable[str]) -> keras.Model:
    """Freeze every layer except the named ones (names of nested layers or models work).

    Naming a nested model keeps all of its layers trainable. Unknown names raise.
    """
    names = set(trainable_layer_names)
    keep: list[keras.layers.Layer] = []
    found: set[str] = set()
    for layer, leaves in _iter_layers_with_descendants(model):
        if layer.name in names:
            keep.extend(leaves)
            found.add(layer.name)
    unknown = names - found
    if unknown:
        raise ValueError(f"Layers not found in model {model.name!r}: {sorted(unknown)}")
    return _set_leaf_trainability(model, keep)


def unfreeze_all(model: keras.Model, keep_batchnorm_frozen: bool = True) -> keras.Model:
    """Make every layer trainable (BatchNorm optionally kept in inference mode)."""
    leaves = list(iter_leaf_layers(model))
    return _set_leaf_trainability(
        model, _without_batchnorm(leaves) if keep_batchnorm_frozen else leaves
    )


def unfreeze_last_n(model: keras.Model, n: int, keep_batchnorm_frozen: bool = True) -> keras.Model:
    """Unfreeze the last ``n`` layers of the backbone; the rest of it stays frozen.

    With a nested backbone (e.g. ResNet50, where the study used n=11) ``n`` counts
    the backbone's own layers, as ``base.layers[-n:]`` does, and the layers around
    it (the head) stay trainable. Without one, ``n`` counts the model's layers.
    BatchNorm layers stay frozen by default: small fine-tuning batches would wreck
    their pretrained statistics.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    backbone = find_backbone(model)
    if backbone is None:
        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        trainable = layers[len(layers) - n :] if n else []
    else:
        base_layers = [
            layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)
        ]
        head_leaves = [
            leaf
            for layer in model.layers
            if layer is not backbone
            for leaf in (iter_leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
        ]
        trainable = (base_layers[len(base_layers) - n :] if n else []) + head_leaves
    leaves = [
        leaf
        for layer in trainable
        for leaf in (iter_leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    ]
    return _set_leaf_trainability(
        model, _without_batchnorm(leaves) if keep_batchnorm_frozen else leaves
    )


def replace_head(
    model: keras.Model,
    n_classes: int,
    head_layer_name: str = CLASSIFIER_LAYER_NAME,
) -> keras.Model:
    """Return a model sharing every layer of ``model`` but with a new softmax head.

    The new ``Dense(n_classes, softmax)`` is named ``"classifier"`` and reads the
    features that fed the old head layer ``head_layer_name``.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    try:
        features = model.get_layer(head_layer_name).input
    except ValueError as error:
        raise ValueError(
            f"Model {model.name!r} has no head layer named {head_layer_name!r}"
        ) from error
    outputs = keras.layers.Dense(n_classes, activation="softmax", name=CLASSIFIER_LAYER_NAME, dtype="float32")(
        features
    )
    return keras.Model(model.input, outputs, name=model.name)
