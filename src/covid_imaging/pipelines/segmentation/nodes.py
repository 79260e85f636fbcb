"""Segmentation nodes: one template (train → evaluate → summarise) used per model."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from covid_imaging.segmentation.data import make_segmentation_dataset
from covid_imaging.segmentation.metrics import (
    comparison_table,
    evaluate_segmentation,
    summarise_segmentation_metrics,
)
from covid_imaging.segmentation.models import build_segmentation_model
from covid_imaging.segmentation.plots import plot_sample_predictions, plot_training_curves
from covid_imaging.segmentation.postprocessing import postprocess_probability_map
from covid_imaging.segmentation.training import (
    configure_device,
    set_global_seed,
    train_segmentation_model,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def select_segmentation_images(model_input_table: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Rows usable for segmentation: tasks listed in ``params['tasks']`` that have a mask."""
    tasks = params["tasks"]
    table = model_input_table[model_input_table["task"].isin(tasks) & (model_input_table["mask_path"] != "")]
    missing = [split for split in SPLITS if not (table["split"] == split).any()]
    if missing:
        raise ValueError(
            f"No segmentation images (tasks {tasks}, with masks) in split(s) {missing}; "
            f"check segmentation_data.tasks and the manifest ({len(model_input_table)} rows)."
        )
    logger.info("Segmentation images per split: %s", table["split"].value_counts().to_dict())
    return table.reset_index(drop=True)


def _split_rows(table: pd.DataFrame, split: str, limit: int | None = None) -> pd.DataFrame:
    rows = table[table["split"] == split]
    return rows.head(limit) if limit else rows


DEVICE_KEYS = ("mixed_precision", "multi_gpu")


def _augmentation_ops(params: dict[str, Any]) -> dict[str, Any] | None:
    """The per-op augmentation settings, or None when augmentation is switched off."""
    if not params.get("enabled", True):
        return None
    return {key: value for key, value in params.items() if key != "enabled"}


def train_segmentation(
    images: pd.DataFrame,
    model_params: dict[str, Any],
    training_params: dict[str, Any],
    augmentation_params: dict[str, Any],
    data_params: dict[str, Any],
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build the configured model and train it; best weights by validation loss."""
    set_global_seed(int(data_params["seed"]))
    strategy = configure_device(
        mixed_precision=bool(training_params.get("mixed_precision", False)),
        multi_gpu=bool(training_params.get("multi_gpu", False)),
    )
    image_size = int(data_params["image_size"])
    train = _split_rows(images, "train", data_params.get("max_train_images"))
    validation = _split_rows(images, "validation", data_params.get("max_validation_images"))
    train_ds = make_segmentation_dataset(
        train["image_path"], train["mask_path"], image_size, int(data_params["batch_size"]),
        shuffle=True, augment_params=_augmentation_ops(augmentation_params),
        seed=int(data_params["seed"]),
    )
    validation_ds = make_segmentation_dataset(
        validation["image_path"], validation["mask_path"], image_size, int(data_params["batch_size"]),
        shuffle=False, augment_params=None, seed=int(data_params["seed"]),
    )
    with strategy.scope():
        model = build_segmentation_model(
            model_params["builder"],
            input_size=image_size,
            **{key: value for key, value in model_params.items() if key != "builder"},
        )
    logger.info(
        "Training %s (%d parameters) on %d images, validating on %d",
        model_params["builder"], model.count_params(), len(train), len(validation),
    )
    fit_params = {key: value for key, value in training_params.items() if key not in DEVICE_KEYS}
    return train_segmentation_model(model, train_ds, validation_ds, fit_params)


def evaluate_on_test(
    model: keras.Model,
    images: pd.DataFrame,
    data_params: dict[str, Any],
    postprocessing_params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, float], Figure]:
    """Predict the test split batch by batch; metrics before and after post-processing.

    Streams: only one batch of probability maps is in memory at a time, plus a few
    samples kept for the figure.
    """
    test = _split_rows(images, "test")
    image_size = int(data_params["image_size"])
    dataset = make_segmentation_dataset(
        test["image_path"], test["mask_path"], image_size, int(data_params["batch_size"]),
        shuffle=False, augment_params=None, seed=0,
    )
    n_samples = int(data_params.get("n_sample_predictions", 4))
    batch_tables, samples = [], []
    rows = iter(test.itertuples(index=False))
    for batch_images, batch_masks in dataset:
        probability_maps = np.asarray(model.predict_on_batch(batch_images), dtype=np.float32)[..., 0]
        records = []
        for image, mask, probability_map in zip(
            batch_images.numpy()[..., 0], batch_masks.numpy()[..., 0], probability_maps, strict=True
        ):
            row = next(rows)
            postprocessed = postprocess_probability_map(probability_map, postprocessing_params)
            records.append(
                {"image_id": row.image_id, "source": row.source, "probability_map": probability_map,
                 "mask": mask, "postprocessed": postprocessed}
            )
            if len(samples) < n_samples:
                samples.append((image, mask, probability_map, postprocessed))
        batch_tables.append(evaluate_segmentation(records))
    per_image = pd.concat(batch_tables, ignore_index=True)
    figure = plot_sample_predictions(*(np.stack(items) for items in zip(*samples, strict=True)))
    return per_image, test_metrics_from(per_image), figure


def test_metrics_from(per_image: pd.DataFrame) -> dict[str, float]:
    """Flat metric dict for MLflow: overall means, and per-source post-processed Dice."""
    metrics = {f"test_{column}": float(per_image[column].mean()) for column in per_image.columns if column not in ("image_id", "source")}
    for source, rows in per_image.groupby("source"):
        metrics[f"test_dice_post_{source}"] = float(rows["dice_post"].mean())
        metrics[f"test_dice_raw_{source}"] = float(rows["dice_raw"].mean())
    return metrics


def summarise_metrics(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std overall and per source."""
    return summarise_segmentation_metrics(per_image, group_col="source")


def compare_segmentation_models(**summaries: pd.DataFrame) -> pd.DataFrame:
    """Paper-style comparison (model, mDice, mIoU, MSE) before and after post-processing."""
    after = comparison_table(summaries, stage="post").assign(stage="post-processed")
    before = comparison_table(summaries, stage="raw").assign(stage="threshold 0.5")
    table = pd.concat([after, before], ignore_index=True)
    logger.info("Segmentation comparison (test split):\n%s", table.to_string(index=False, float_format="%.3f"))
    return table


def training_curves(history: dict[str, list[float]]) -> Figure:
    """Loss and Dice per epoch, training vs validation."""
    return plot_training_curves(history)
