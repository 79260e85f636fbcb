"""Keras 3 classifier builders for chest X-ray and lung CT images.

Every builder takes ``(input_size, input_size, channels)`` float32 images in [0, 1]
(gray images: ``channels=1``), outputs one probability per class (rows sum to 1) and
has its last ``Dense`` layer named ``"classifier"`` so that
:mod:`covid_imaging.classification.transfer` can swap heads. That layer is a softmax
over the classes, except in the basic CNN with two classes: there it is the
reference's single sigmoid unit, followed by a parameter-free layer that outputs
``[1 - p, p]`` (sparse categorical cross-entropy on that is binary cross-entropy on p).
The output layers compute in float32 under any mixed-precision policy: a softmax in
bfloat16 (8-bit mantissa) cost the simple CNNs about 0.05 validation balanced accuracy.
Which model uses which builder, at which size, is declared in the model registry
(:mod:`covid_imaging.registry`).
All layers have explicit, deterministic names: two models built from the same
arguments have the same layer names, which is what weight transfer matches on.

``weights`` follows one rule everywhere:

* ``None``: random initialisation;
* ``"imagenet"``: ImageNet weights (keras.applications backbones only; downloads
  them unless they are already in the Keras cache);
* a file path: for keras.applications backbones the backbone's own weights file
  (e.g. a manually copied ``*_notop.h5``), for the architectures written here the
  whole model's weights (``model.save_weights`` output).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import keras

from covid_imaging.classification.layers import (
    ImageNetPreprocessing,
    RepeatChannels,
    SigmoidToTwoClasses,
)

WeightsSpec = str | os.PathLike | None

CLASSIFIER_LAYER_NAME = "classifier"
INPUT_LAYER_NAME = "image"


@dataclass(frozen=True)
class KerasApplicationSpec:
    """How to build and feed one keras.applications backbone."""

    constructor: Callable[..., keras.Model]
    preprocessing_mode: str
    min_input_size: int


KERAS_APPLICATIONS: Mapping[str, KerasApplicationSpec] = MappingProxyType(
    {
        "resnet50": KerasApplicationSpec(keras.applications.ResNet50, "caffe", 32),
        "resnet101": KerasApplicationSpec(keras.applications.ResNet101, "caffe", 32),
        "resnet152": KerasApplicationSpec(keras.applications.ResNet152, "caffe", 32),
        "densenet121": KerasApplicationSpec(keras.applications.DenseNet121, "torch", 32),
        "densenet201": KerasApplicationSpec(keras.applications.DenseNet201, "torch", 32),
        "efficientnetb4": KerasApplicationSpec(
            keras.applications.EfficientNetB4, "scale_to_255", 32
        ),
        "vgg16": KerasApplicationSpec(keras.applications.VGG16, "caffe", 32),
        "vgg19": KerasApplicationSpec(keras.applications.VGG19, "caffe", 32),
        "mobilenet": KerasApplicationSpec(keras.applications.MobileNet, "tf", 32),
        "mobilenetv2": KerasApplicationSpec(keras.applications.MobileNetV2, "tf", 32),
        "inceptionv3": KerasApplicationSpec(keras.applications.InceptionV3, "tf", 75),
    }
)


# --------------------------------------------------------------------------- helpers


def _is_pretrained(weights: WeightsSpec) -> bool:
    return weights is not None


def _resolve_weights(weights: WeightsSpec) -> str | None:
    """Validate a weights spec and return what keras expects (None, "imagenet" or a path)."""
    if weights is None or weights == "imagenet":
        return weights
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights must be None, 'imagenet' or an existing weights file; got {weights!r}"
        )
    return str(path)


def _load_custom_model_weights(model: keras.Model, weights: WeightsSpec) -> keras.Model:
    """Apply the weights rule to an architecture that has no ImageNet checkpoint."""
    if weights == "imagenet":
        raise ValueError(
            f"No ImageNet weights exist for the custom architecture {model.name!r}; "
            "use weights=None or a path to weights saved from the same architecture."
        )
    resolved = _resolve_weights(weights)
    if resolved is not None:
        model.load_weights(resolved)
    return model


def _image_input(input_size: int, channels: int) -> keras.KerasTensor:
    return keras.Input(shape=(input_size, input_size, channels), name=INPUT_LAYER_NAME)


def _classifier_head(
    features: keras.KerasTensor, n_classes: int, dropout: float
) -> keras.KerasTensor:
    """Global average pooling + dropout + softmax ``classifier``."""
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.layers.Dense(n_classes, activation="softmax", name=CLASSIFIER_LAYER_NAME, dtype="float32")(x)


def _check_common_args(n_classes: int, input_size: int, channels: int, min_size: int) -> None:
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if input_size < min_size:
        raise ValueError(f"input_size must be >= {min_size} for this model, got {input_size}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")


# --------------------------------------------------------------------- small CNNs


def _relu_layer(x, layer: keras.layers.Layer, batchnorm: bool, name: str):
    """``layer`` with ReLU, or ``layer`` (no bias) -> BatchNorm -> ReLU when ``batchnorm``."""
    if not batchnorm:
        return layer(x)
    x = layer(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _conv_pool_blocks(x, filters: Sequence[int], dropout: float = 0.0, batchnorm: bool = False):
    """``len(filters)`` x [3x3 ReLU Conv2D -> 2x2 MaxPool (-> Dropout when ``dropout``)];
    with ``batchnorm`` each conv is followed by BatchNorm before its ReLU."""
    for index, n_filters in enumerate(filters, start=1):
        conv = keras.layers.Conv2D(n_filters, 3, padding="same", activation=None if batchnorm else "relu",
                                   use_bias=not batchnorm, name=f"conv{index}")
        x = _relu_layer(x, conv, batchnorm, f"conv{index}")
        x = keras.layers.MaxPooling2D(2, name=f"pool{index}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"conv_dropout{index}")(x)
    return x


def build_simple_cnn(
    n_classes: int,
    input_size: int = 224,
    channels: int = 1,
    filters: Sequence[int] = (32, 64, 128, 128),
    dense_units: int = 128,
    dropout: float = 0.5,
    flatten: bool = True,
    weights: WeightsSpec = None,
    name: str = "simple_cnn",
) -> keras.Model:
    """Small conv/pool stack + dense head (the transfer-learning study's CNN).

    Each entry of ``filters`` adds a 3x3 ReLU conv followed by 2x2 max pooling.
    ``flatten=True`` flattens the last feature map (input size is then fixed for
    transfer); ``False`` uses global average pooling instead.
    """
    _check_common_args(n_classes, input_size, channels, min_size=2 ** len(filters))
    inputs = _image_input(input_size, channels)
    x = _conv_pool_blocks(inputs, filters)
    if flatten:
        x = keras.layers.Flatten(name="flatten")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name=CLASSIFIER_LAYER_NAME, dtype="float32")(x)
    return _load_custom_model_weights(keras.Model(inputs, outputs, name=name), weights)


def build_basic_cnn(
    n_classes: int = 2,
    input_size: int = 32,
    channels: int = 1,
    filters: Sequence[int] = (32, 64, 128),
    conv_dropout: float = 0.25,
    dense_units: int = 512,
    dense_dropout: float = 0.5,
    n_dense_with_dropout: int = 4,
    n_dense: int = 3,
    batchnorm: bool = False,
    weights: WeightsSpec = None,
) -> keras.Model:
    """The CT study's basic CNN (reference input 32 x 32).

    ``len(filters)`` x [3x3 ReLU Conv2D -> 2x2 MaxPool -> Dropout], flatten, then
    ``n_dense_with_dropout`` x [Dense ``dense_units`` ReLU -> Dropout], ``n_dense`` x
    Dense ``dense_units`` ReLU, and the output: with two classes one sigmoid unit (the
    reference; binary cross-entropy), exposed as ``[1 - p, p]``; with more, a softmax.
    Defaults are the reference's 3 blocks, 4 + 3 dense layers of 512. ``batchnorm``
    (not in the reference) puts BatchNorm between every conv or dense layer and its ReLU:
    without it the seven dense layers stay at the initial loss on a few hundred slices.
    """
    _check_common_args(n_classes, input_size, channels, min_size=2 ** len(filters))
    inputs = _image_input(input_size, channels)
    x = _conv_pool_blocks(inputs, filters, conv_dropout, batchnorm)
    x = keras.layers.Flatten(name="flatten")(x)
    for index in range(1, n_dense_with_dropout + n_dense + 1):
        dense = keras.layers.Dense(dense_units, activation=None if batchnorm else "relu", use_bias=not batchnorm,
                                   name=f"dense{index}")
        x = _relu_layer(x, dense, batchnorm, f"dense{index}")
        if index <= n_dense_with_dropout:
            x = keras.layers.Dropout(dense_dropout, name=f"dense_dropout{index}")(x)
    if n_classes == 2:
        p = keras.layers.Dense(1, activation="sigmoid", name=CLASSIFIER_LAYER_NAME, dtype="float32")(x)
        outputs = SigmoidToTwoClasses(name="probabilities", dtype="float32")(p)
    else:
        outputs = keras.layers.Dense(
            n_classes, activation="softmax", name=CLASSIFIER_LAYER_NAME, dtype="float32"
        )(x)
    return _load_custom_model_weights(keras.Model(inputs, outputs, name="basic_cnn"), weights)


def build_alexnet(
    n_classes: int,
    input_size: int = 224,
    channels: int = 1,
    dense_units: int = 4096,
    dropout: float = 0.5,
    batchnorm_all: bool = False,
    weights: WeightsSpec = None,
) -> keras.Model:
    """AlexNet written with Keras layers (reference input 227 x 227).

    Batch normalisation stands in for the original local response normalisation (after
    conv1 and conv2; ``batchnorm_all``: after every conv and fc layer, which a few hundred
    images from random weights need), and "same" padding lets the network accept small
    inputs (32 px upwards).
    """
    _check_common_args(n_classes, input_size, channels, min_size=32)
    inputs = _image_input(input_size, channels)
    conv_specs = (  # (filters, kernel, strides, pool after)
        (96, 11, 4, True),
        (256, 5, 1, True),
        (384, 3, 1, False),
        (384, 3, 1, False),
        (256, 3, 1, True),
    )
    x = inputs
    for index, (n_filters, kernel, strides, pool) in enumerate(conv_specs, start=1):
        x = keras.layers.Conv2D(
            n_filters,
            kernel,
            strides=strides,
            padding="same",
            activation="relu",
            name=f"conv{index}",
        )(x)
        if index <= 2 or batchnorm_all:
            x = keras.layers.BatchNormalization(name=f"norm{index}")(x)
        if pool:
            x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{index}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for index in (6, 7):
        dense = keras.layers.Dense(dense_units, activation=None if batchnorm_all else "relu",
                                   use_bias=not batchnorm_all, name=f"fc{index}")
        x = _relu_layer(x, dense, batchnorm_all, f"fc{index}")
        x = keras.layers.Dropout(dropout, name=f"dropout{index}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name=CLASSIFIER_LAYER_NAME, dtype="float32")(x)
    return _load_custom_model_weights(keras.Model(inputs, outputs, name="alexnet"), weights)


# ------------------------------------------------------------ keras.applications


# Convolutions per block of VGG16 and VGG19 (64, 128, 256, 512, 512 filters).
VGG_BLOCKS: Mapping[str, tuple[int, ...]] = MappingProxyType({"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)})


def _vgg_bn(blocks: Sequence[int], input_size: int, name: str) -> keras.Model:
    """VGG's feature extractor with BatchNorm after every 3x3 conv (torchvision's vgg*_bn)."""
    inputs = keras.Input(shape=(input_size, input_size, 3))
    x = inputs
    for block, (n_convs, filters) in enumerate(zip(blocks, (64, 128, 256, 512, 512), strict=True), start=1):
        for conv in range(1, n_convs + 1):
            layer = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")
            x = _relu_layer(x, layer, True, f"block{block}_conv{conv}")
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name=name)


def build_keras_application(
    name: str,
    n_classes: int,
    input_size: int = 224,
    channels: int = 1,
    weights: WeightsSpec = None,
    freeze_base: bool | None = None,
    dropout: float = 0.2,
    batchnorm_inference: bool | None = None,
    batchnorm: bool = False,
) -> keras.Model:
    """A keras.applications backbone (``include_top=False``) with a new N-class top.

    Gray input is repeated to 3 channels and ImageNet-normalised inside the model.
    ``freeze_base=None`` freezes the backbone exactly when pretrained weights are
    loaded. ``batchnorm_inference=None`` (same rule) calls the backbone with
    ``training=False`` so its BatchNorm statistics stay those of the pretrained
    weights even after unfreezing (the Keras fine-tuning recipe). ``batchnorm`` (VGG
    only, random or file weights): VGG16-BN / VGG19-BN, the same convolutions each
    followed by BatchNorm before its ReLU (Keras has no such variant; without it a VGG
    from random weights does not leave the initial loss in a few hundred steps).
    """
    key = name.lower()
    if key not in KERAS_APPLICATIONS:
        raise ValueError(f"Unknown keras application {name!r}; known: {sorted(KERAS_APPLICATIONS)}")
    spec = KERAS_APPLICATIONS[key]
    _check_common_args(n_classes, input_size, channels, min_size=spec.min_input_size)
    if channels not in (1, 3):
        raise ValueError(f"ImageNet backbones take 1 or 3 channels, got {channels}")
    if batchnorm and (key not in VGG_BLOCKS or weights == "imagenet"):
        raise ValueError(f"batchnorm: true is the VGG-BN variant of vgg16/vgg19 without ImageNet weights, got {name!r} "
                         f"with weights={weights!r}")
    resolved_weights = _resolve_weights(weights)
    pretrained = _is_pretrained(weights)
    freeze = pretrained if freeze_base is None else freeze_base
    inference_bn = pretrained if batchnorm_inference is None else batchnorm_inference

    inputs = _image_input(input_size, channels)
    x = RepeatChannels(3, name="gray_to_rgb")(inputs) if channels == 1 else inputs
    x = ImageNetPreprocessing(spec.preprocessing_mode, name="imagenet_preprocessing")(x)
    if batchnorm:
        base = _vgg_bn(VGG_BLOCKS[key], input_size, key)
        if resolved_weights is not None:
            base.load_weights(resolved_weights)
    else:
        base = spec.constructor(
            include_top=False,
            weights=resolved_weights,
            input_shape=(input_size, input_size, 3),
            name=key,
        )
    base.trainable = not freeze
    features = base(x, training=False) if inference_bn else base(x)
    outputs = _classifier_head(features, n_classes, dropout)
    return keras.Model(inputs, outputs, name=f"{key}_classifier")


def build_resnet50(
    n_classes: int,
    input_size: int = 224,
    weights: WeightsSpec = None,
    channels: int = 1,
    freeze_base: bool | None = None,
    dropout: float = 0.2,
) -> keras.Model:
    """ResNet50 backbone + new N-class top; backbone frozen when pretrained weights load.

    Use :func:`covid_imaging.classification.transfer.unfreeze_last_n` (n=11) for the
    second fine-tuning phase.
    """
    return build_keras_application(
        "resnet50",
        n_classes,
        input_size=input_size,
        channels=channels,
        weights=weights,
        freeze_base=freeze_base,
        dropout=dropout,
    )


# ------------------------------------------------------------------------ HRNet


def _conv_bn(
    x: keras.KerasTensor,
    filters: int,
    kernel: int,
    strides: int,
    name: str,
    relu: bool = True,
) -> keras.KerasTensor:
    x = keras.layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _residual_add(
    x: keras.KerasTensor, shortcut: keras.KerasTensor, name: str
) -> keras.KerasTensor:
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def _basic_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """Two 3x3 convs with an identity (or 1x1 projected) shortcut."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, 1, f"{name}_proj", relu=False)
    y = _conv_bn(x, filters, 3, 1, f"{name}_a")
    y = _conv_bn(y, filters, 3, 1, f"{name}_b", relu=False)
    return _residual_add(y, shortcut, name)


def _bottleneck_block(
    x: keras.KerasTensor, planes: int, name: str, expansion: int = 4
) -> keras.KerasTensor:
    """1x1 -> 3x3 -> 1x1 (x expansion) residual block."""
    out_channels = planes * expansion
    shortcut = x
    if x.shape[-1] != out_channels:
        shortcut = _conv_bn(x, out_channels, 1, 1, f"{name}_proj", relu=False)
    y = _conv_bn(x, planes, 1, 1, f"{name}_a")
    y = _conv_bn(y, planes, 3, 1, f"{name}_b")
    y = _conv_bn(y, out_channels, 1, 1, f"{name}_c", relu=False)
    return _residual_add(y, shortcut, name)


def _fuse_branches(
    branches: list[keras.KerasTensor], channels: Sequence[int], name: str
) -> list[keras.KerasTensor]:
    """HRNet multi-resolution fusion: every output branch sums all input branches.

    Lower-resolution inputs are 1x1-projected then upsampled; higher-resolution inputs
    go through a chain of stride-2 3x3 convs (ReLU between, not after the last).
    """
    if len(branches) == 1:
        return branches
    fused = []
    for target, target_channels in enumerate(channels):
        terms = []
        for source, branch in enumerate(branches):
            prefix = f"{name}_to{target}_from{source}"
            if source == target:
                terms.append(branch)
            elif source > target:
                y = _conv_bn(branch, target_channels, 1, 1, prefix, relu=False)
                y = keras.layers.UpSampling2D(
                    size=2 ** (source - target), interpolation="nearest", name=f"{prefix}_up"
                )(y)
                terms.append(y)
            else:
                y = branch
                n_steps = target - source
                for step in range(n_steps):
                    last = step == n_steps - 1
                    y = _conv_bn(
                        y,
                        target_channels if last else channels[source],
                        3,
                        2,
                        f"{prefix}_down{step}",
                        relu=not last,
                    )
                terms.append(y)
        summed = keras.layers.Add(name=f"{name}_sum{target}")(terms)
        fused.append(keras.layers.ReLU(name=f"{name}_fused{target}")(summed))
    return fused


def _hr_stage(
    branches: list[keras.KerasTensor],
    channels: Sequence[int],
    n_modules: int,
    blocks_per_branch: int,
    name: str,
) -> list[keras.KerasTensor]:
    """Repeated HR modules: basic blocks on every branch, then fusion."""
    for module in range(n_modules):
        prefix = f"{name}_m{module}"
        branches = [
            functools.reduce(
                lambda y, block, i=i: _basic_block(y, channels[i], f"{prefix}_br{i}_blk{block}"),
                range(blocks_per_branch),
                branch,
            )
            for i, branch in enumerate(branches)
        ]
        branches = _fuse_branches(branches, channels, f"{prefix}_fuse")
    return branches


def _classification_head(
    branches: list[keras.KerasTensor],
    head_planes: Sequence[int],
    final_channels: int,
    name: str = "head",
) -> keras.KerasTensor:
    """HRNet-cls head: widen every branch, then fold high -> low resolution by strided convs."""
    widened = [
        _bottleneck_block(branch, planes, f"{name}_incre{i}")
        for i, (branch, planes) in enumerate(zip(branches, head_planes, strict=True))
    ]
    y = widened[0]
    for i in range(1, len(widened)):
        y = _conv_bn(y, widened[i].shape[-1], 3, 2, f"{name}_down{i}")
        y = keras.layers.Add(name=f"{name}_sum{i}")([y, widened[i]])
    return _conv_bn(y, final_channels, 1, 1, f"{name}_final")


def build_hrnet(
    n_classes: int,
    input_size: int = 224,
    channels: int = 1,
    width: int = 18,
    small: bool = False,
    stage1_blocks: int | None = None,
    blocks_per_branch: int | None = None,
    modules_per_stage: Sequence[int] | None = None,
    dropout: float = 0.2,
    weights: WeightsSpec = None,
) -> keras.Model:
    """HRNet classifier written with Keras layers.

    Stem (two stride-2 3x3 convs, 1/4 resolution) -> stage 1 (bottlenecks) -> stages
    2, 3, 4 with 2, 3, 4 parallel branches of ``width * (1, 2, 4, 8)`` channels at
    1/4 .. 1/32 resolution, each module ending in a multi-resolution fusion -> a head
    that fuses all branches -> global average pooling -> softmax ``classifier``.

    Defaults are HRNet-W18-small-v2 sized (stage-1 2 blocks, modules (1, 3, 2), 2
    blocks per branch). ``small=True`` is a CPU-friendly variant (1 block, modules
    (1, 1, 1), 1 block per branch, half-width head). Explicit counts override both.
    ``input_size`` must be a multiple of 32 so that branch resolutions line up.
    """
    _check_common_args(n_classes, input_size, channels, min_size=32)
    if input_size % 32:
        raise ValueError(f"HRNet input_size must be a multiple of 32, got {input_size}")
    stage1_blocks = stage1_blocks or (1 if small else 2)
    blocks_per_branch = blocks_per_branch or (1 if small else 2)
    modules_per_stage = tuple(modules_per_stage or ((1, 1, 1) if small else (1, 3, 2)))
    if len(modules_per_stage) != 3:
        raise ValueError(f"modules_per_stage needs 3 entries (stages 2-4), got {modules_per_stage}")
    stem_channels, stage1_planes = (32, 32) if small else (64, 64)
    head_planes = (16, 32, 64, 128) if small else (32, 64, 128, 256)
    final_channels = 1024 if small else 2048
    branch_channels = [width * 2**i for i in range(4)]

    inputs = _image_input(input_size, channels)
    x = _conv_bn(inputs, stem_channels, 3, 2, "stem1")
    x = _conv_bn(x, stem_channels, 3, 2, "stem2")
    for block in range(stage1_blocks):
        x = _bottleneck_block(x, stage1_planes, f"stage1_blk{block}")

    branches = [
        _conv_bn(x, branch_channels[0], 3, 1, "transition1_br0"),
        _conv_bn(x, branch_channels[1], 3, 2, "transition1_br1"),
    ]
    for stage, n_modules in enumerate(modules_per_stage, start=2):
        n_branches = len(branches)
        branches = _hr_stage(
            branches, branch_channels[:n_branches], n_modules, blocks_per_branch, f"stage{stage}"
        )
        if n_branches < 4:
            branches.append(
                _conv_bn(
                    branches[-1],
                    branch_channels[n_branches],
                    3,
                    2,
                    f"transition{stage}_br{n_branches}",
                )
            )

    features = _classification_head(branches, head_planes, final_channels)
    outputs = _classifier_head(features, n_classes, dropout)
    name = f"hrnet_w{width}{'_small' if small else ''}"
    return _load_custom_model_weights(keras.Model(inputs, outputs, name=name), weights)


# ------------------------------------------------------------- builders by name


CLASSIFIER_BUILDERS: Mapping[str, Callable[..., keras.Model]] = MappingProxyType(
    {
        "simple_cnn": build_simple_cnn,
        "basic_cnn": build_basic_cnn,
        "alexnet": build_alexnet,
        "hrnet": build_hrnet,
        "resnet50": build_resnet50,
        **{
            name: functools.partial(build_keras_application, name)
            for name in KERAS_APPLICATIONS
            if name != "resnet50"
        },
    }
)


def build_classifier(name: str, **kwargs: object) -> keras.Model:
    """Build a registered classifier by name (e.g. from Kedro parameters)."""
    key = name.lower()
    if key not in CLASSIFIER_BUILDERS:
        raise ValueError(
            f"Unknown classifier {name!r}; known classifiers: {sorted(CLASSIFIER_BUILDERS)}"
        )
    return CLASSIFIER_BUILDERS[key](**kwargs)
