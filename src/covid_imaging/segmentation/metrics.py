"""Per-image segmentation metrics, their summaries and the paper-style comparison table.

Each image is scored twice: the raw prediction (probability map thresholded at
0.5) and the post-processed mask. Column names are ``<metric>_<stage>`` with
stage ``raw`` or ``post``; ``mse`` compares the probability map itself with the
mask (for a binary mask the MSE would just be ``1 - accuracy``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

STAGES: tuple[str, ...] = ("raw", "post")
BINARY_METRICS: tuple[str, ...] = ("dice", "iou", "accuracy")
OVERALL_GROUP = "all"


def _binary(mask: np.ndarray) -> np.ndarray:
    """A squeezed boolean copy of a ``{0, 1}`` (or ``{0, 255}``) mask."""
    return np.squeeze(np.asarray(mask)) > 0


def _check_same_shape(*arrays: np.ndarray) -> None:
    """Raise if the arrays do not all have the same shape."""
    shapes = {np.shape(array) for array in arrays}
    if len(shapes) != 1:
        raise ValueError(f"Prediction and mask shapes differ: {sorted(shapes)}.")


def dice_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice ``2|P.T| / (|P| + |T|)`` of two binary masks; 1.0 when both are empty."""
    prediction, target = _binary(prediction), _binary(target)
    _check_same_shape(prediction, target)
    total = int(prediction.sum()) + int(target.sum())
    if total == 0:
        return 1.0  # Nothing to find and nothing predicted: a perfect answer.
    return 2.0 * int(np.logical_and(prediction, target).sum()) / total


def iou_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two binary masks; 1.0 when both are empty."""
    prediction, target = _binary(prediction), _binary(target)
    _check_same_shape(prediction, target)
    union = int(np.logical_or(prediction, target).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(prediction, target).sum()) / union


def pixel_accuracy(prediction: np.ndarray, target: np.ndarray) -> float:
    """Fraction of pixels where the binary prediction equals the mask."""
    prediction, target = _binary(prediction), _binary(target)
    _check_same_shape(prediction, target)
    return float(np.mean(prediction == target))


def mean_squared_error(probability_map: np.ndarray, target: np.ndarray) -> float:
    """Mean squared difference between probabilities in ``[0, 1]`` and the ``{0, 1}`` mask."""
    probabilities = np.squeeze(np.asarray(probability_map, dtype=np.float64))
    truth = _binary(target).astype(np.float64)
    _check_same_shape(probabilities, truth)
    return float(np.mean((probabilities - truth) ** 2))


def image_metrics(
    probability_map: np.ndarray,
    target: np.ndarray,
    postprocessed: np.ndarray,
    threshold: float = 0.5,
) -> dict[str, float]:
    """All metrics of one image, before (``*_raw``) and after (``*_post``) post-processing."""
    raw_prediction = np.squeeze(np.asarray(probability_map)) > threshold
    scores: dict[str, float] = {}
    for stage, prediction in (("raw", raw_prediction), ("post", postprocessed)):
        scores[f"dice_{stage}"] = dice_score(prediction, target)
        scores[f"iou_{stage}"] = iou_score(prediction, target)
        scores[f"accuracy_{stage}"] = pixel_accuracy(prediction, target)
    scores["mse"] = mean_squared_error(probability_map, target)
    return scores


def evaluate_segmentation(
    records: Iterable[Mapping[str, Any]], threshold: float = 0.5
) -> pd.DataFrame:
    """One row of metrics per image.

    Args:
        records: mappings with ``image_id``, ``source`` (e.g. "shenzhen"),
            ``probability_map`` (2-D floats in ``[0, 1]``), ``mask`` (ground truth,
            ``{0, 1}`` or ``{0, 255}``) and ``postprocessed`` (binary mask), all
            of the same height and width.
        threshold: probability above which a raw pixel counts as lung.

    Returns:
        Columns ``image_id``, ``source``, ``dice_raw``, ``iou_raw``,
        ``accuracy_raw``, ``dice_post``, ``iou_post``, ``accuracy_post``, ``mse``.
    """
    rows = [
        {
            "image_id": record["image_id"],
            "source": record["source"],
            **image_metrics(
                record["probability_map"], record["mask"], record["postprocessed"], threshold
            ),
        }
        for record in records
    ]
    columns = (
        ["image_id", "source"]
        + [f"{metric}_{stage}" for stage in STAGES for metric in BINARY_METRICS]
        + ["mse"]
    )
    return pd.DataFrame(rows, columns=columns)


def metric_columns(per_image: pd.DataFrame) -> list[str]:
    """The numeric metric columns of a per-image table, in their order."""
    return [
        column
        for column in per_image.columns
        if column not in ("image_id", "source", "split") and pd.api.types.is_numeric_dtype(per_image[column])
    ]


def summarise_segmentation_metrics(
    per_image: pd.DataFrame, group_cols: tuple[str, ...] = ("source",)
) -> pd.DataFrame:
    """Mean, (sample) standard deviation and minimum of every metric, overall and per group.

    Returns one row per group: ``grouping`` (``"all"`` or the column grouped by, e.g.
    ``source``, ``mask_convention``), ``group`` (the value; ``"all"`` for the overall
    row, which comes first), ``n_images`` and ``<metric>_mean`` / ``_std`` / ``_min``.
    The std of a single image is NaN.
    """
    columns = metric_columns(per_image)

    def summarise(frame: pd.DataFrame, grouping: str, label: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"grouping": grouping, "group": label, "n_images": len(frame)}
        for column in columns:
            row[f"{column}_mean"] = float(frame[column].mean())
            row[f"{column}_std"] = float(frame[column].std())
            row[f"{column}_min"] = float(frame[column].min())
        return row

    rows = [summarise(per_image, OVERALL_GROUP, OVERALL_GROUP)]
    for group_col in group_cols:
        if group_col in per_image.columns:
            rows += [
                summarise(frame, group_col, label)
                for label, frame in per_image.groupby(group_col, sort=True)
            ]
    return pd.DataFrame(rows)


def comparison_table(
    summaries: Mapping[str, pd.DataFrame],
    stage: str = "post",
    group: str = OVERALL_GROUP,
) -> pd.DataFrame:
    """Paper-style table, one row per model: ``model, mDice, mIoU, MSE``.

    Args:
        summaries: model name -> output of ``summarise_segmentation_metrics``.
        stage: "post" (post-processed masks), "raw" (thresholded at 0.5) or
            "native_post" (post-processed at the image's own size) for Dice and IoU;
            MSE always compares the probability map with the mask at model size.
        group: which summary row to report ("all", a source or a convention).
    """
    rows = []
    for model_name, summary in summaries.items():
        if f"dice_{stage}_mean" not in summary.columns:
            raise ValueError(f"stage {stage!r} is not in the summary of {model_name!r}.")
        selected = summary[summary["group"] == group]
        if selected.empty:
            raise ValueError(f"Summary of {model_name!r} has no group {group!r} row.")
        row = selected.iloc[0]
        rows.append(
            {
                "model": model_name,
                "mDice": float(row[f"dice_{stage}_mean"]),
                "mIoU": float(row[f"iou_{stage}_mean"]),
                "MSE": float(row["mse_mean"]),
            }
        )
    return pd.DataFrame(rows, columns=["model", "mDice", "mIoU", "MSE"])
