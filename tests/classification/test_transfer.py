"""Weight transfer, freezing and head replacement really do what they say."""

import keras
import numpy as np
import pytest

from covid_imaging.classification.models import build_resnet50, build_simple_cnn
from covid_imaging.classification.transfer import (
    find_backbone,
    freeze_all_but,
    iter_leaf_layers,
    replace_head,
    transfer_weights,
    unfreeze_all,
    unfreeze_last_n,
)

from .helpers import leaf_weights, random_batch, weights_equal

SMALL_CNN = {"input_size": 32, "filters": (4, 8), "dense_units": 8}


@pytest.fixture(scope="module")
def resnet50():
    """One ResNet50 for the module: every freezing helper sets all layers explicitly."""
    return build_resnet50(3, input_size=32, freeze_base=True)


def _train_one_step(model: keras.Model, size: int = 32) -> None:
    images, labels = random_batch(size, n=4)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        run_eagerly=True,
    )
    model.train_on_batch(images, labels)


def test_transfer_copies_every_layer_but_the_head():
    source = build_simple_cnn(3, **SMALL_CNN)
    _train_one_step(source)
    target = build_simple_cnn(3, **SMALL_CNN)

    copied = transfer_weights(source, target)

    assert copied == ["conv1", "conv2", "dense"]
    for name in copied:
        assert weights_equal(
            source.get_layer(name).get_weights(), target.get_layer(name).get_weights()
        )
    assert not np.array_equal(
        source.get_layer("classifier").get_weights()[0],
        target.get_layer("classifier").get_weights()[0],
    )


def test_transfer_to_a_model_with_another_number_of_classes():
    source = build_simple_cnn(4, **SMALL_CNN)
    target = build_simple_cnn(2, **SMALL_CNN)
    copied = transfer_weights(source, target)
    assert "classifier" not in copied
    assert weights_equal(
        source.get_layer("conv2").get_weights(), target.get_layer("conv2").get_weights()
    )


def test_transfer_by_order_matches_differently_named_layers():
    source = build_simple_cnn(3, **SMALL_CNN, name="a")
    target = build_simple_cnn(3, **SMALL_CNN, name="b")
    copied = transfer_weights(source, target, by_name=False)
    assert copied == ["conv1", "conv2", "dense"]
    assert weights_equal(
        source.get_layer("conv1").get_weights(), target.get_layer("conv1").get_weights()
    )


def test_transfer_shape_mismatch_raises_and_leaves_target_untouched():
    source = build_simple_cnn(3, input_size=32, filters=(4, 8), dense_units=8)
    target = build_simple_cnn(3, input_size=32, filters=(4, 16), dense_units=8)
    before = leaf_weights(target)
    with pytest.raises(ValueError, match="shape mismatch.*conv2"):
        transfer_weights(source, target)
    after = leaf_weights(target)
    assert all(weights_equal(before[name], after[name]) for name in before)


def test_transfer_missing_layer_raises():
    source = build_simple_cnn(3, input_size=32, filters=(4,), dense_units=8)
    target = build_simple_cnn(3, **SMALL_CNN)
    with pytest.raises(ValueError, match="conv2"):
        transfer_weights(source, target)


def test_freeze_all_but_keeps_frozen_weights_fixed_during_training():
    model = build_simple_cnn(3, **SMALL_CNN)
    freeze_all_but(model, ["classifier"])
    before = leaf_weights(model)

    _train_one_step(model)

    after = leaf_weights(model)
    for name in ("conv1", "conv2", "dense"):
        assert weights_equal(before[name], after[name]), name
    assert not weights_equal(before["classifier"], after["classifier"])


def test_freeze_all_but_rejects_unknown_names():
    with pytest.raises(ValueError, match="nope"):
        freeze_all_but(build_simple_cnn(3, **SMALL_CNN), ["classifier", "nope"])


def test_freezing_a_nested_backbone_layer_by_name(resnet50):
    model = resnet50
    freeze_all_but(model, ["conv5_block3_3_conv", "classifier"])
    trainable = {id(v) for v in model.trainable_weights}
    assert {
        id(v) for v in model.get_layer("resnet50").get_layer("conv5_block3_3_conv").weights
    } <= trainable
    assert len(model.trainable_weights) == 4  # conv kernel + bias, dense kernel + bias


def test_unfreeze_last_n_unfreezes_the_end_of_the_resnet50_backbone(resnet50):
    model = resnet50
    unfreeze_last_n(model, 11)
    base = find_backbone(model)
    assert base.name == "resnet50"

    last_11 = base.layers[-11:]
    expected = {
        id(v)
        for layer in last_11
        if not isinstance(layer, keras.layers.BatchNormalization)
        for v in layer.trainable_weights
    } | {id(v) for v in model.get_layer("classifier").weights}
    assert {id(v) for v in model.trainable_weights} == expected
    assert not base.layers[-12].trainable
    assert all(
        not layer.trainable
        for layer in last_11
        if isinstance(layer, keras.layers.BatchNormalization)
    )


def test_unfreeze_last_n_and_training_changes_only_those_layers(resnet50):
    model = resnet50
    unfreeze_last_n(model, 11)
    before = leaf_weights(model)
    _train_one_step(model)
    after = leaf_weights(model)
    changed = {name for name in before if not weights_equal(before[name], after[name])}
    assert "conv5_block3_3_conv" in changed and "classifier" in changed
    assert "conv1_conv" not in changed and "conv4_block6_3_conv" not in changed


def test_unfreeze_all_keeps_batchnorm_frozen_by_default(resnet50):
    model = resnet50
    unfreeze_all(model)
    leaves = list(iter_leaf_layers(model))
    assert all(
        layer.trainable
        for layer in leaves
        if not isinstance(layer, keras.layers.BatchNormalization)
    )
    assert not any(
        layer.trainable for layer in leaves if isinstance(layer, keras.layers.BatchNormalization)
    )
    unfreeze_all(model, keep_batchnorm_frozen=False)
    assert all(layer.trainable for layer in iter_leaf_layers(model))


def test_replace_head_swaps_only_the_classifier():
    model = build_simple_cnn(3, **SMALL_CNN)
    new_model = replace_head(model, 5)
    assert new_model.output_shape == (None, 5)
    head = new_model.get_layer("classifier")
    assert head.units == 5 and head is not model.get_layer("classifier")
    assert new_model.get_layer("conv1") is model.get_layer("conv1")
    images, _ = random_batch(32, n=2)
    np.testing.assert_allclose(np.asarray(new_model(images)).sum(axis=1), 1.0, rtol=1e-5)


def test_replace_head_on_nested_backbone_model(resnet50):
    model = resnet50
    new_model = replace_head(model, 2)
    assert new_model.output_shape == (None, 2)
    assert new_model.get_layer("resnet50") is model.get_layer("resnet50")
