"""One output head per lung-mask convention.

Public lung masks follow two outlines: NLM masks (Shenzhen, Montgomery, JSRT) stop at
the heart border, V7 masks (ieee8023) include the lung behind the heart. A single
output trained on both learns neither: it draws part of the retrocardiac lung on NLM
images and not all of it on V7 images. So a model trained on several conventions has
one sigmoid channel per convention, sharing every other layer; each training image
trains only the head of its own convention (the other heads' targets are
``IGNORED``), and each prediction reads the head of the convention asked for.

Which head is which is stored in the model itself (:class:`MaskConventionHeads`, an
identity layer that saves its names with the model), so a model loaded anywhere knows
its heads. The first head is the default: it answers for images whose convention is
unknown (lung masking of classification images, new images at inference).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import keras
import numpy as np

UNSPECIFIED = "unspecified"
# Target value of the heads an image does not train (not its convention).
IGNORED = -1.0
# The output channel that answers for an unknown convention (lung masking, new images).
DEFAULT_HEAD = 0


@keras.saving.register_keras_serializable(package="covid_imaging")
class MaskConventionHeads(keras.layers.Layer):
    """Identity on the ``(B, H, W, n_heads)`` probability maps; names each channel's convention."""

    def __init__(self, conventions: Sequence[str], **kwargs) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.conventions = tuple(str(name) for name in conventions)
        if not self.conventions or len(set(self.conventions)) != len(self.conventions):
            raise ValueError(f"Mask convention heads need distinct names, got {list(conventions)}.")

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "conventions": list(self.conventions)}


def model_conventions(model: keras.Model) -> tuple[str, ...]:
    """The conventions of ``model``'s output channels, in order (the first is the default).

    A model without :class:`MaskConventionHeads` (one channel, saved before heads
    existed) has one head that answers for every convention.
    """
    for layer in reversed(model.layers):
        if isinstance(layer, MaskConventionHeads):
            return layer.conventions
    return (UNSPECIFIED,) * int(model.output_shape[-1])


def head_index(conventions: Sequence[str], convention: str | None) -> int:
    """The channel that draws ``convention``; the default (first) head for any other."""
    return list(conventions).index(convention) if convention in conventions else DEFAULT_HEAD


def training_heads(training_conventions: Iterable[str], preferred_order: Sequence[str] = ()) -> tuple[str, ...]:
    """The heads of a model trained on images of ``training_conventions``.

    Only conventions that training images carry get a head (an untrained head would
    answer for them at test time). They come in ``preferred_order``, so its first
    convention present is the default head; the others follow alphabetically.
    """
    present = set(map(str, training_conventions))
    return tuple([name for name in preferred_order if name in present]
                 + sorted(present - set(preferred_order)))


def select_heads(probabilities: np.ndarray, heads: Sequence[int]) -> np.ndarray:
    """``(N, H, W)`` maps from ``(N, H, W, n_heads)`` model output: image ``i`` read at head ``heads[i]``."""
    probabilities = np.asarray(probabilities)
    return np.take_along_axis(probabilities, np.asarray(heads, dtype=np.intp)[:, None, None, None], axis=-1)[..., 0]
