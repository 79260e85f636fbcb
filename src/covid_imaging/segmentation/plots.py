"""Matplotlib figures for segmentation runs (training curves, sample predictions).

Figures are built with ``matplotlib.figure.Figure`` directly, not ``pyplot``:
no GUI backend is needed (they render with Agg), no global state is touched and
nothing leaks when a pipeline makes many figures. Kedro's MatplotlibDataset
saves them with ``fig.savefig``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

# The Dice Keras reports during training is the soft Dice of the probabilities (no
# threshold, no post-processing), averaged over batches: lower than the test Dice.
CURVES: tuple[tuple[str, str], ...] = (
    ("loss", "Loss"), ("dice_coefficient", "Soft Dice (training metric, unthresholded)"),
)
ROW_TITLES: tuple[str, ...] = ("Image", "Ground truth", "Prediction", "Post-processed")


def plot_training_curves(
    history: Mapping[str, Sequence[float]],
    model_name: str = "",
    loss: str = "",
    curves: Sequence[tuple[str, str]] = CURVES,
) -> Figure:
    """Loss and soft Dice (or other ``curves``: (history key, title)) per epoch, training
    vs validation, side by side, titled with the model."""
    figure = Figure(figsize=(5 * len(curves), 4), layout="constrained")
    if model_name:
        figure.suptitle(f"{model_name}: training vs validation per epoch")
    axes = np.atleast_1d(figure.subplots(1, len(curves)))
    for axis, (key, title) in zip(axes, curves, strict=True):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(f"{prefix}{key}")
            if values:
                axis.plot(np.arange(1, len(values) + 1), values, marker="o", label=label)
        axis.set_title(f"{title} ({loss})" if key == "loss" and loss else title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if axis.get_lines():
            axis.legend()
    return figure


def _as_2d(array: np.ndarray) -> np.ndarray:
    """Drop a trailing channel axis so ``imshow`` gets a 2-D array."""
    array = np.asarray(array)
    return array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array


def plot_sample_predictions(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    probability_maps: Sequence[np.ndarray],
    postprocessed: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    model_name: str = "",
    heading: str = "test images (title: file, Dice after post-processing)",
) -> Figure:
    """One column per sample; rows: image, ground truth, probability map (with its colour
    bar), post-processed overlay; titled ``<model_name>: <heading>`` when ``model_name`` is given."""
    n_samples = len(images)
    lengths = {n_samples, len(masks), len(probability_maps), len(postprocessed)}
    if n_samples == 0 or len(lengths) != 1:
        raise ValueError(
            "Need the same, non-zero number of images, masks, probability maps and "
            f"post-processed masks; got {sorted(lengths)}."
        )
    figure = Figure(figsize=(2.5 * n_samples, 2.5 * len(ROW_TITLES)), layout="constrained")
    axes = np.asarray(figure.subplots(len(ROW_TITLES), n_samples, squeeze=False))
    for column in range(n_samples):
        image = _as_2d(images[column])
        post = _as_2d(postprocessed[column]) > 0
        axes[0, column].imshow(image, cmap="gray")
        axes[1, column].imshow(_as_2d(masks[column]) > 0, cmap="gray", vmin=0, vmax=1)
        probability_image = axes[2, column].imshow(_as_2d(probability_maps[column]), cmap="viridis", vmin=0, vmax=1)
        axes[3, column].imshow(image, cmap="gray")
        # Transparent where the mask is empty, so the X-ray stays visible.
        axes[3, column].imshow(np.ma.masked_where(~post, post), cmap="autumn", alpha=0.4)
        if titles is not None:
            axes[0, column].set_title(str(titles[column]), fontsize=8)
    for row, title in enumerate(ROW_TITLES):
        axes[row, 0].set_ylabel(title)
    figure.colorbar(probability_image, ax=list(axes[2]), label="lung probability", shrink=0.9)
    if model_name:
        figure.suptitle(f"{model_name}: {heading}")
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    return figure
