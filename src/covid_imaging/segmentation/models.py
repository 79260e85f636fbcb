"""Keras 3 builders for the lung segmentation networks (U-Net, FCN, DeepLabV3).

Every builder takes ``(input_size, base_filters, dropout_rate, batch_norm)`` and
returns an uncompiled ``keras.Model`` mapping a ``(H, W, 1)`` float32 image to a
``(H, W, n)`` map of sigmoid probabilities, one channel per lung-mask convention in
``mask_conventions`` (default: one; see :mod:`covid_imaging.segmentation.conventions`).
The final activation layer is forced to float32 so the models also work under the ``mixed_float16`` policy (float16
sigmoids saturate and make the losses unstable).

Adding a model means writing one ``build_*`` function and one entry in
``MODEL_BUILDERS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
from keras import layers

from covid_imaging.segmentation.conventions import (
    UNSPECIFIED,
    MaskConventionHeads,
    model_conventions,
)

DEFAULT_ATROUS_RATES: tuple[int, ...] = (1, 6, 12, 18)


def _check_input_size(input_size: int, downsampling_factor: int, model_name: str) -> None:
    """Raise if ``input_size`` cannot be pooled ``downsampling_factor`` times exactly.

    Skip connections and transposed convolutions only line up again when every
    pooling step halves an even size.
    """
    if input_size <= 0 or input_size % downsampling_factor != 0:
        raise ValueError(
            f"{model_name} needs an input_size divisible by {downsampling_factor}, "
            f"got {input_size}."
        )


def _conv_bn_relu(
    x: keras.KerasTensor,
    filters: int,
    batch_norm: bool,
    name: str,
    dilation_rate: int = 1,
    kernel_size: int = 3,
) -> keras.KerasTensor:
    """One ``kernel_size`` convolution, optional batch normalisation, then ReLU."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        dilation_rate=dilation_rate,
        kernel_initializer="he_normal",
        # A bias right before batch normalisation is cancelled by its mean shift.
        use_bias=not batch_norm,
        name=f"{name}_conv",
    )(x)
    if batch_norm:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _conv_stack(
    x: keras.KerasTensor, filters: int, n_convs: int, batch_norm: bool, name: str
) -> keras.KerasTensor:
    """``n_convs`` consecutive 3x3 conv-(BN)-ReLU layers with the same filter count."""
    for index in range(n_convs):
        x = _conv_bn_relu(x, filters, batch_norm, name=f"{name}_{index + 1}")
    return x


def _sigmoid_output(x: keras.KerasTensor, mask_conventions: Sequence[str]) -> keras.KerasTensor:
    """1x1 convolution to one channel per mask convention, a float32 sigmoid, the heads' names."""
    logits = layers.Conv2D(len(mask_conventions), 1, padding="same", name="logits")(x)
    probabilities = layers.Activation("sigmoid", dtype="float32", name="probabilities")(logits)
    return MaskConventionHeads(mask_conventions, name="mask_convention_heads")(probabilities)


def _image_input(input_size: int) -> keras.KerasTensor:
    """The single-channel float32 image input shared by all models."""
    return keras.Input(shape=(input_size, input_size, 1), dtype="float32", name="image")


def build_unet(
    input_size: int = 256,
    base_filters: int = 32,
    dropout_rate: float = 0.1,
    batch_norm: bool = True,
    mask_conventions: Sequence[str] = (UNSPECIFIED,),
) -> keras.Model:
    """U-Net with 4 contracting and 4 expanding blocks.

    Filters are ``base_filters * (1, 2, 4, 8)`` on the way down, ``base_filters * 16``
    in the bottleneck (reference: 32-64-128-256 / 512) and mirrored on the way up.
    Each contracting block is 2 convs, 2x2 max-pool and dropout; each expanding
    block is a stride-2 transposed conv, concatenation with the skip, dropout and
    2 convs.
    """
    _check_input_size(input_size, 16, "U-Net")
    inputs = _image_input(input_size)
    level_filters = [base_filters * factor for factor in (1, 2, 4, 8)]

    x = inputs
    skips = []
    for level, filters in enumerate(level_filters, start=1):
        x = _conv_stack(x, filters, 2, batch_norm, name=f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
        x = layers.Dropout(dropout_rate, name=f"down{level}_dropout")(x)

    x = _conv_stack(x, base_filters * 16, 2, batch_norm, name="bottleneck")

    for level, (filters, skip) in enumerate(
        zip(reversed(level_filters), reversed(skips), strict=True), start=1
    ):
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}_tconv")(
            x
        )
        x = layers.Concatenate(name=f"up{level}_concat")([x, skip])
        x = layers.Dropout(dropout_rate, name=f"up{level}_dropout")(x)
        x = _conv_stack(x, filters, 2, batch_norm, name=f"up{level}")

    return keras.Model(inputs, _sigmoid_output(x, mask_conventions), name="unet")


def build_fcn(
    input_size: int = 256,
    base_filters: int = 32,
    dropout_rate: float = 0.1,
    batch_norm: bool = True,
    mask_conventions: Sequence[str] = (UNSPECIFIED,),
) -> keras.Model:
    """Fully convolutional network without skip connections.

    2 encoder blocks (2 convs + max-pool + dropout, filters ``base``, ``2*base``),
    2 decoder blocks (2 convs + stride-2 transposed conv, ``4*base`` then ``2*base``
    convs), and a last block of 3 convs whose third is the 1x1 sigmoid output.
    """
    _check_input_size(input_size, 4, "FCN")
    inputs = _image_input(input_size)

    x = inputs
    for level, filters in enumerate((base_filters, base_filters * 2), start=1):
        x = _conv_stack(x, filters, 2, batch_norm, name=f"enc{level}")
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
        x = layers.Dropout(dropout_rate, name=f"enc{level}_dropout")(x)

    for level, (conv_filters, up_filters) in enumerate(
        ((base_filters * 4, base_filters * 2), (base_filters * 2, base_filters)), start=1
    ):
        x = _conv_stack(x, conv_filters, 2, batch_norm, name=f"dec{level}")
        x = layers.Conv2DTranspose(
            up_filters, 2, strides=2, padding="same", name=f"dec{level}_tconv"
        )(x)

    x = _conv_stack(x, base_filters, 2, batch_norm, name="head")
    return keras.Model(inputs, _sigmoid_output(x, mask_conventions), name="fcn")


def build_deeplabv3(
    input_size: int = 256,
    base_filters: int = 32,
    dropout_rate: float = 0.1,
    batch_norm: bool = True,
    atrous_rates: Sequence[int] = DEFAULT_ATROUS_RATES,
    mask_conventions: Sequence[str] = (UNSPECIFIED,),
) -> keras.Model:
    """Compact DeepLabV3: small backbone, ASPP and a transposed-conv decoder.

    Backbone: 3 blocks of 2, 2 and 3 convs (filters ``base * (1, 2, 4)``), each
    followed by max-pooling, so ASPP sees 1/8 resolution. ASPP: one parallel
    branch per atrous rate (a 1x1 conv for rate 1, as in the paper, 3x3 dilated
    convs otherwise), concatenated and fused by a 1x1 conv. Decoder: 3 stride-2
    transposed convs halving the filters back to full resolution, then the
    sigmoid output.
    """
    _check_input_size(input_size, 8, "DeepLabV3")
    if not atrous_rates:
        raise ValueError("DeepLabV3 needs at least one atrous rate.")
    inputs = _image_input(input_size)

    x = inputs
    for level, (filters, n_convs) in enumerate(
        ((base_filters, 2), (base_filters * 2, 2), (base_filters * 4, 3)), start=1
    ):
        x = _conv_stack(x, filters, n_convs, batch_norm, name=f"backbone{level}")
        x = layers.MaxPooling2D(2, name=f"backbone{level}_pool")(x)

    aspp_filters = base_filters * 8
    branches = [
        _conv_bn_relu(
            x,
            aspp_filters,
            batch_norm,
            name=f"aspp_rate{rate}",
            dilation_rate=int(rate),
            kernel_size=1 if int(rate) == 1 else 3,
        )
        for rate in atrous_rates
    ]
    x = branches[0] if len(branches) == 1 else layers.Concatenate(name="aspp_concat")(branches)
    x = _conv_bn_relu(x, aspp_filters, batch_norm, name="aspp_fuse", kernel_size=1)
    x = layers.Dropout(dropout_rate, name="aspp_dropout")(x)

    for level, filters in enumerate((base_filters * 4, base_filters * 2, base_filters), start=1):
        x = layers.Conv2DTranspose(
            filters, 3, strides=2, padding="same", name=f"decoder{level}_tconv"
        )(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"decoder{level}_bn")(x)
        x = layers.Activation("relu", name=f"decoder{level}_relu")(x)

    return keras.Model(inputs, _sigmoid_output(x, mask_conventions), name="deeplabv3")


MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "unet": build_unet,
    "fcn": build_fcn,
    "deeplabv3": build_deeplabv3,
}


def build_ensemble(members: Sequence[keras.Model], name: str = "ensemble") -> keras.Model:
    """One model that averages the probability maps of ``members``.

    A plain Keras model, so it predicts, saves and loads like any member and can stand
    in for one wherever a lung mask is needed. Its input is the largest member's size;
    a member trained at another size sees the image resized to its own size, and its
    probability map is resized back (bilinear) before the mean.
    """
    if not members:
        raise ValueError("An ensemble needs at least one member model.")
    channels = {member.input_shape[-1] for member in members}
    if len(channels) != 1 or any(member.input_shape[1] != member.input_shape[2] for member in members):
        raise ValueError(f"Ensemble members need square inputs of one channel count, got "
                         f"{sorted({tuple(member.input_shape[1:]) for member in members})}.")
    heads = {model_conventions(member) for member in members}
    if len(heads) != 1:
        raise ValueError(f"Ensemble members need the same mask convention heads, got {sorted(heads)}.")
    size = max(int(member.input_shape[1]) for member in members)
    image = keras.Input(shape=(size, size, channels.pop()), name="image")
    outputs = []
    for index, member in enumerate(members):
        member.name = f"{member.name}_{index}" if any(m.name == member.name for m in members[:index]) else member.name
        own = int(member.input_shape[1])
        if own == size:
            outputs.append(member(image))
            continue
        resized = layers.Resizing(own, own, interpolation="bilinear", name=f"to_{member.name}")(image)
        outputs.append(layers.Resizing(size, size, interpolation="bilinear", name=f"from_{member.name}")(member(resized)))
    average = outputs[0] if len(outputs) == 1 else layers.Average(dtype="float32", name="mean_probability")(outputs)
    return keras.Model(image, MaskConventionHeads(heads.pop(), name="mask_convention_heads")(average), name=name)


#: Keys of a segmentation model's parameters block that are not builder arguments:
#: ``builder`` names the builder, ``convention_heads`` orders the heads that the
#: training rows' mask conventions select (they become ``mask_conventions``).
NON_ARCHITECTURE_KEYS = ("builder", "convention_heads")


def architecture_options(model_params: Mapping[str, Any]) -> dict[str, Any]:
    """The builder arguments of a segmentation model's parameters block."""
    return {key: value for key, value in model_params.items() if key not in NON_ARCHITECTURE_KEYS}


def build_segmentation_model(name: str, **kwargs: object) -> keras.Model:
    """Build the model registered as ``name`` in ``MODEL_BUILDERS`` with ``kwargs``.

    Raises:
        ValueError: if ``name`` is not a registered model.
    """
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown segmentation model {name!r}; available: {sorted(MODEL_BUILDERS)}."
        ) from None
    return builder(**kwargs)
