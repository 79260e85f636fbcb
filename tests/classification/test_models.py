"""Builders: shapes, one finite training step, weights rule, naming, custom layers."""

import dataclasses
import types

import keras
import numpy as np
import pytest

from covid_imaging.classification import models
from covid_imaging.classification.layers import ImageNetPreprocessing, RepeatChannels
from covid_imaging.classification.models import (
    CLASSIFIER_BUILDERS,
    build_basic_cnn,
    build_classifier,
    build_hrnet,
    build_keras_application,
    build_resnet50,
    build_simple_cnn,
)

from .helpers import N_CLASSES, random_batch, weights_equal

# Smallest inputs each architecture accepts, small heads: CPU-friendly.
TINY_BUILDS = {
    "simple_cnn": {"input_size": 32},
    "basic_cnn": {"input_size": 32},
    "alexnet": {"input_size": 32, "dense_units": 32},
    "hrnet": {"input_size": 32, "small": True},
    "resnet50": {"input_size": 32},
    "resnet101": {"input_size": 32},
    "resnet152": {"input_size": 32},
    "densenet121": {"input_size": 32},
    "densenet201": {"input_size": 32},
    "efficientnetb4": {"input_size": 32},
    "vgg16": {"input_size": 32},
    "vgg19": {"input_size": 32},
    "mobilenet": {"input_size": 32},
    "mobilenetv2": {"input_size": 32},
    "inceptionv3": {"input_size": 75},
}


def test_every_registered_builder_has_a_tiny_test_configuration():
    assert set(CLASSIFIER_BUILDERS) == set(TINY_BUILDS)


@pytest.mark.parametrize("name", sorted(TINY_BUILDS))
def test_builder_outputs_softmax_and_trains_one_step(name):
    kwargs = TINY_BUILDS[name]
    model = build_classifier(name, n_classes=N_CLASSES, weights=None, **kwargs)
    images, labels = random_batch(kwargs["input_size"], n=2)

    probabilities = np.asarray(model(images, training=False))
    assert model.input_shape == (None, kwargs["input_size"], kwargs["input_size"], 1)
    assert probabilities.shape == (2, N_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer("classifier").units == N_CLASSES

    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss)


def test_unknown_classifier_lists_the_known_names():
    with pytest.raises(ValueError, match="resnet50") as error:
        build_classifier("resnet9000", n_classes=3)
    assert "hrnet" in str(error.value) and "simple_cnn" in str(error.value)


def test_builder_names_are_case_insensitive():
    model = build_classifier("Simple_CNN", n_classes=2, input_size=32)
    assert model.name == "simple_cnn"


def test_layer_names_are_deterministic_across_builds():
    first = build_simple_cnn(3, input_size=32)
    second = build_simple_cnn(3, input_size=32)
    assert [layer.name for layer in first.layers] == [layer.name for layer in second.layers]


def test_custom_architecture_rejects_imagenet_weights():
    with pytest.raises(ValueError, match="No ImageNet weights"):
        build_simple_cnn(3, input_size=32, weights="imagenet")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights"):
        build_resnet50(3, input_size=32, weights=tmp_path / "nope.h5")


def test_custom_architecture_loads_weights_from_a_path(tmp_path):
    trained = build_simple_cnn(3, input_size=32, filters=(4, 8), dense_units=8)
    path = tmp_path / "simple.weights.h5"
    trained.save_weights(path)
    reloaded = build_simple_cnn(3, input_size=32, filters=(4, 8), dense_units=8, weights=path)
    for original, loaded in zip(trained.layers, reloaded.layers, strict=True):
        assert weights_equal(original.get_weights(), loaded.get_weights())


def test_keras_application_loads_backbone_weights_from_a_path(tmp_path):
    donor = build_keras_application("mobilenetv2", 3, input_size=32)
    path = tmp_path / "mobilenetv2_notop.weights.h5"
    donor.get_layer("mobilenetv2").save_weights(path)

    model = build_keras_application("mobilenetv2", 3, input_size=32, weights=path)
    base = model.get_layer("mobilenetv2")
    assert weights_equal(base.get_weights(), donor.get_layer("mobilenetv2").get_weights())
    # Pretrained weights: backbone frozen by default.
    assert base.trainable_weights == []
    assert model.get_layer("classifier").trainable_weights


def test_imagenet_weights_are_requested_and_freeze_the_backbone(monkeypatch):
    requested = {}

    def fake_resnet50(**kwargs):
        requested.update(kwargs)
        return keras.applications.ResNet50(**{**kwargs, "weights": None})

    fake_specs = dict(models.KERAS_APPLICATIONS)
    fake_specs["resnet50"] = dataclasses.replace(fake_specs["resnet50"], constructor=fake_resnet50)
    monkeypatch.setattr(models, "KERAS_APPLICATIONS", types.MappingProxyType(fake_specs))

    model = build_resnet50(3, input_size=32, weights="imagenet")
    assert requested["weights"] == "imagenet"
    assert requested["include_top"] is False
    assert model.get_layer("resnet50").trainable is False


def test_random_init_backbone_is_trainable_and_fed_rgb():
    model = build_resnet50(3, input_size=32)
    base = model.get_layer("resnet50")
    assert base.trainable_weights  # nothing pretrained to protect
    # Gray input is repeated to 3 channels inside the model.
    assert isinstance(model.get_layer("gray_to_rgb"), RepeatChannels)
    assert base.input_shape == (None, 32, 32, 3)


def test_backbone_can_be_frozen_explicitly_and_rgb_input_is_accepted():
    model = build_keras_application("mobilenetv2", 3, input_size=32, channels=3, freeze_base=True)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.get_layer("mobilenetv2").trainable_weights == []
    assert "gray_to_rgb" not in [layer.name for layer in model.layers]


def test_application_input_size_below_minimum_is_rejected():
    with pytest.raises(ValueError, match=">= 75"):
        build_classifier("inceptionv3", n_classes=3, input_size=32)


@pytest.mark.parametrize(
    ("mode", "reference"),
    [
        ("caffe", keras.applications.resnet50.preprocess_input),
        ("torch", keras.applications.densenet.preprocess_input),
        ("tf", keras.applications.mobilenet_v2.preprocess_input),
    ],
)
def test_imagenet_preprocessing_matches_keras_preprocess_input(mode, reference):
    rgb = np.random.default_rng(1).random((2, 4, 4, 3), dtype=np.float32)
    ours = np.asarray(ImageNetPreprocessing(mode)(rgb))
    expected = np.asarray(reference(rgb.copy() * 255.0))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_repeat_channels_copies_the_gray_channel():
    gray = np.arange(8, dtype=np.float32).reshape(1, 2, 4, 1)
    rgb = np.asarray(RepeatChannels(3)(gray))
    assert rgb.shape == (1, 2, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray[..., 0])


def test_model_with_custom_layers_round_trips_through_keras_file(tmp_path):
    model = build_keras_application("mobilenetv2", 3, input_size=32)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    images, _ = random_batch(32, n=2)
    np.testing.assert_allclose(
        np.asarray(reloaded(images, training=False)),
        np.asarray(model(images, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_hrnet_has_four_parallel_branches_with_halving_resolution():
    model = build_hrnet(3, input_size=64, width=8)  # default (W18-small-v2-like) depth
    # Fused outputs of stage 4's last module: one per branch, 1/4 .. 1/32 resolution.
    shapes = [model.get_layer(f"stage4_m1_fuse_fused{i}").output.shape for i in range(4)]
    assert [s[1] for s in shapes] == [16, 8, 4, 2]
    assert [s[-1] for s in shapes] == [8, 16, 32, 64]
    # Fusion really mixes resolutions: upsampled low-res and strided high-res inputs.
    assert model.get_layer("stage4_m1_fuse_to0_from3_up").size == (8, 8)
    assert model.get_layer("stage4_m1_fuse_to3_from0_down2_conv").strides == (2, 2)
    # Stages 2, 3, 4 repeat 1, 3, 2 modules.
    assert model.get_layer("stage3_m2_fuse_fused2") is not None


def test_hrnet_small_has_fewer_modules_and_blocks():
    model = build_hrnet(3, input_size=32, small=True)
    names = {layer.name for layer in model.layers}
    assert "stage4_m0_fuse_fused3" in names
    assert not any(name.startswith(("stage3_m1", "stage4_m1")) for name in names)
    assert not any("_blk1" in name for name in names)


def test_hrnet_rejects_sizes_that_do_not_halve_cleanly():
    with pytest.raises(ValueError, match="multiple of 32"):
        build_hrnet(3, input_size=48)


# ------------------------------------------------------------ CT study builders


def _layer_kinds(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_basic_cnn_has_the_reference_layer_structure():
    model = build_basic_cnn(2)  # reference: 32 x 32 gray slices, COVID-19 vs non-COVID
    assert model.input_shape == (None, 32, 32, 1)
    kinds = _layer_kinds(model)
    assert kinds[0] == "InputLayer"
    # 3 x [Conv2D -> MaxPool -> Dropout]
    assert kinds[1:10] == ["Conv2D", "MaxPooling2D", "Dropout"] * 3
    assert kinds[10] == "Flatten"
    # 4 x [Dense 512 ReLU -> Dropout], then 3 x Dense 512 ReLU
    assert kinds[11:19] == ["Dense", "Dropout"] * 4
    assert kinds[19:22] == ["Dense"] * 3
    hidden = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][:-1]
    assert len(hidden) == 7
    assert all(layer.units == 512 and layer.activation is keras.activations.relu for layer in hidden)
    # one sigmoid output unit, exposed as [1 - p, p] by a parameter-free layer
    head = model.get_layer("classifier")
    assert head.units == 1 and head.activation is keras.activations.sigmoid
    assert kinds[22:] == ["Dense", "SigmoidToTwoClasses"]
    assert model.layers[-1].count_params() == 0
    assert sum(kind == "Dense" for kind in kinds) == 8 and sum(k == "Conv2D" for k in kinds) == 3


def test_batchnorm_option_normalises_every_conv_and_dense_layer_before_its_relu():
    model = build_basic_cnn(2, batchnorm=True)
    trainable = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)][:-1]
    assert len(trainable) == 10  # the reference's 3 convs and 7 dense layers, nothing removed
    for layer in trainable:
        following = model.layers[model.layers.index(layer) + 1 : model.layers.index(layer) + 3]
        assert not layer.use_bias and layer.activation is keras.activations.linear
        assert [type(f).__name__ for f in following] == ["BatchNormalization", "Activation"]
        assert following[1].activation is keras.activations.relu
    alexnet = build_classifier("alexnet", n_classes=2, input_size=64, dense_units=16, batchnorm_all=True)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in alexnet.layers) == 7  # 5 convs + 2 fc
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in build_classifier(
        "alexnet", n_classes=2, input_size=64, dense_units=16).layers) == 2  # the default: conv1 and conv2 only


def test_vgg_bn_has_vggs_convolutions_each_followed_by_batchnorm():
    for name, n_convs in (("vgg16", 13), ("vgg19", 16)):
        plain = build_classifier(name, n_classes=2, input_size=32).get_layer(name)
        with_bn = build_classifier(name, n_classes=2, input_size=32, batchnorm=True).get_layer(name)
        convs = [layer for layer in with_bn.layers if isinstance(layer, keras.layers.Conv2D)]
        assert [c.filters for c in convs] == [c.filters for c in plain.layers if isinstance(c, keras.layers.Conv2D)]
        assert len(convs) == n_convs
        for conv in convs:
            following = with_bn.layers[with_bn.layers.index(conv) + 1]
            assert isinstance(following, keras.layers.BatchNormalization) and not conv.use_bias
        assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in plain.layers)
    with pytest.raises(ValueError, match="VGG-BN"):
        build_classifier("resnet101", n_classes=2, input_size=32, batchnorm=True)
    with pytest.raises(ValueError, match="without ImageNet weights"):
        build_classifier("vgg16", n_classes=2, input_size=32, batchnorm=True, weights="imagenet")


def test_basic_cnn_with_batchnorm_fits_a_small_two_class_set():
    """With BatchNorm (and the training core's BatchNorm settings for short runs) the
    basic CNN with a one-layer head (the CT CPU default) fits bright vs dark centres,
    and predicts them in inference mode (moving statistics, not the batch's)."""
    import tensorflow as tf

    from covid_imaging.classification.training import train_classifier

    rng = np.random.default_rng(0)
    images = rng.uniform(0.2, 0.5, (64, 32, 32, 1)).astype("float32")
    labels = np.arange(64) % 2
    images[labels == 1, 10:22, 10:22] += 0.4
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    model = build_basic_cnn(2, batchnorm=True, dense_units=64, n_dense_with_dropout=1, n_dense=0)
    model, _ = train_classifier(model, dataset, dataset, {
        "epochs": 20, "seed": 0, "learning_rate": 0.001, "batchnorm_momentum": 0.9, "batchnorm_recompute_batches": 4,
        "reduce_lr": {"enabled": False},
    })
    predicted = np.asarray(model.predict(images, verbose=0)).argmax(axis=1)  # inference mode: moving statistics
    assert (predicted == labels).mean() >= 0.9


def test_basic_cnn_two_class_output_is_one_minus_p_and_p_and_trains_as_bce():
    model = build_basic_cnn(2, input_size=32, filters=(4, 8, 8), dense_units=8)
    images, _ = random_batch(32, n=4)
    labels = np.array([0, 1, 1, 0])
    probabilities = np.asarray(model(images, training=False))
    p = np.asarray(keras.Model(model.input, model.get_layer("classifier").output)(images, training=False))
    np.testing.assert_allclose(probabilities, np.concatenate([1 - p, p], axis=1), rtol=1e-6)
    # sparse categorical cross-entropy on [1 - p, p] is binary cross-entropy on p
    sparse = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    bce = keras.losses.BinaryCrossentropy()(labels[:, None].astype("float32"), p)
    np.testing.assert_allclose(float(sparse), float(bce), rtol=1e-4)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    assert np.isfinite(model.train_on_batch(images, labels))


def test_basic_cnn_round_trips_through_a_keras_file(tmp_path):
    model = build_basic_cnn(2, input_size=32, filters=(4, 8, 8), dense_units=8)
    model.save(tmp_path / "basic.keras")
    reloaded = keras.saving.load_model(tmp_path / "basic.keras")
    images, _ = random_batch(32, n=2)
    np.testing.assert_allclose(np.asarray(reloaded(images)), np.asarray(model(images)), rtol=1e-5, atol=1e-6)


def test_basic_cnn_loads_whole_model_weights_from_a_path(tmp_path):
    trained = build_basic_cnn(2, filters=(4, 8, 8), dense_units=8)
    path = tmp_path / "basic.weights.h5"
    trained.save_weights(path)
    reloaded = build_basic_cnn(2, filters=(4, 8, 8), dense_units=8, weights=path)
    assert weights_equal(trained.get_weights(), reloaded.get_weights())
    with pytest.raises(ValueError, match="No ImageNet weights"):
        build_basic_cnn(2, weights="imagenet")


def test_alexnet_accepts_its_reference_input_size():
    model = build_classifier("alexnet", n_classes=2, input_size=227, dense_units=8)
    assert model.input_shape == (None, 227, 227, 1)
    assert model.output_shape == (None, 2)


@pytest.mark.parametrize(
    ("name", "preprocessing"),
    [("vgg19", "caffe"), ("resnet101", "caffe"), ("densenet201", "torch"), ("mobilenet", "tf")],
)
def test_new_backbones_forward_imagenet_weights_and_freeze_without_downloading(monkeypatch, name, preprocessing):
    requested = {}
    spec = models.KERAS_APPLICATIONS[name]
    assert spec.preprocessing_mode == preprocessing

    def fake_constructor(**kwargs):
        requested.update(kwargs)
        return spec.constructor(**{**kwargs, "weights": None})  # no download

    fake_specs = dict(models.KERAS_APPLICATIONS)
    fake_specs[name] = dataclasses.replace(spec, constructor=fake_constructor)
    monkeypatch.setattr(models, "KERAS_APPLICATIONS", types.MappingProxyType(fake_specs))

    model = build_classifier(name, n_classes=2, input_size=32, weights="imagenet")
    assert requested["weights"] == "imagenet" and requested["include_top"] is False
    assert model.get_layer(name).trainable is False
    assert model.get_layer("imagenet_preprocessing").mode == preprocessing
    random_init = build_classifier(name, n_classes=2, input_size=32, weights=None)
    assert random_init.get_layer(name).trainable_weights  # nothing pretrained to protect
