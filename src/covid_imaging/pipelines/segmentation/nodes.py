"""Segmentation nodes: one template (train → evaluate → summarise) used per model."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from covid_imaging.compute import ComputeConfig
from covid_imaging.registry import TASK_MODALITY
from covid_imaging.segmentation._params import merge_params
from covid_imaging.segmentation.augmentation import OPACITY_KINDS
from covid_imaging.segmentation.conventions import UNSPECIFIED, head_index, training_heads
from covid_imaging.segmentation.data import make_segmentation_dataset
from covid_imaging.segmentation.inference import Loaders, opacity_transform, score_images
from covid_imaging.segmentation.metrics import (
    comparison_table,
    metric_columns,
    summarise_segmentation_metrics,
)
from covid_imaging.segmentation.models import (
    architecture_options,
    build_ensemble,
    build_segmentation_model,
)
from covid_imaging.segmentation.plots import plot_sample_predictions, plot_training_curves
from covid_imaging.segmentation.training import (
    resolve_segmentation_params,
    set_global_seed,
    train_segmentation_model,
    training_device,
)
from covid_imaging.training import as_float32

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
STRESS_TEST_DEFAULTS: dict[str, Any] = {"kinds": list(OPACITY_KINDS), "strength": 0.8, "seed": 7}


SEGMENTATION_DATA_DEFAULTS: dict[str, Any] = {
    "tasks": None,  # null: every chest X-ray task (registry.TASK_MODALITY)
    "sources": None,  # null: every source with masks; or a list (e.g. only NLM-convention sources)
    # Which lung outline each source's masks draw: NLM masks stop at the heart border,
    # V7 masks include the lung behind the heart. Metrics are reported per convention.
    "mask_conventions": {},
    # Fewer images with masks in a split: the run stops (too few to learn from or to measure).
    "min_images": {"train": 8, "validation": 2, "test": 2},
    # Fewer: a warning (a model trained or scored on so few images is not worth comparing).
    "recommended_images": {"train": 100, "validation": 20, "test": 20},
}


# A model's data block (segmentation.<model>.data): what it trains and is scored at.
SEGMENTATION_MODEL_DATA_DEFAULTS: dict[str, Any] = {
    "image_size": 128,
    "batch_size": 8,
    "seed": 42,
    "n_sample_predictions": 4,  # test images of different patients in sample_predictions.png
    "n_worst_predictions": 4,  # the test images with the lowest Dice at native size, in worst_predictions.png
    "max_train_images": None,  # caps for quick experiments; null: all
    "max_validation_images": None,
}


def model_data_params(params: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """A model's data block over its defaults; unknown keys fail, figure counts must be >= 1."""
    data = merge_params(SEGMENTATION_MODEL_DATA_DEFAULTS, params, where=where)
    for key in ("n_sample_predictions", "n_worst_predictions"):
        if isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 1:
            raise ValueError(f"{where}.{key} must be an integer >= 1; got {data[key]!r}")
    return data


class TooFewImagesError(ValueError):
    """A split holds fewer segmentation images than ``segmentation_data.min_images``."""


def check_split_sizes(counts: dict[str, int], minimum: dict[str, int], recommended: dict[str, int],
                      what: str = "segmentation images") -> None:
    """Refuse splits below ``minimum``, warn below ``recommended`` (both per split)."""
    short = {split: counts.get(split, 0) for split in SPLITS if counts.get(split, 0) < int(minimum[split])}
    if short:
        raise TooFewImagesError(
            f"Too few {what} to train and evaluate: {dict(counts)} per split, below the minimum "
            f"{dict(minimum)} in {sorted(short)} (segmentation_data.min_images). Add images, or lower "
            "splits.test_fraction / validation_fraction or the minimum if you really mean to."
        )
    low = {split: counts.get(split, 0) for split in SPLITS if counts.get(split, 0) < int(recommended[split])}
    if low:
        logger.warning(
            "Only %s %s per split (recommended at least %s, segmentation_data.recommended_images): "
            "the models will train, but their metrics are not reliable at this size.",
            dict(counts), what, dict(recommended),
        )


def select_segmentation_images(model_input_table: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Rows usable for segmentation: tasks in ``params['tasks']`` that have a mask.

    Adds ``mask_convention`` from ``params['mask_conventions']`` (``unspecified`` for
    sources it does not name).
    """
    # mask_conventions is a free mapping (any source name), the rest is checked key by key.
    conventions = dict(params.get("mask_conventions") or {})
    settings = merge_params(
        SEGMENTATION_DATA_DEFAULTS, {k: v for k, v in params.items() if k != "mask_conventions"},
        where="segmentation_data",
    )
    tasks = settings["tasks"] or sorted(task for task, modality in TASK_MODALITY.items() if modality == "cxr")
    sources = settings["sources"]
    keep = model_input_table["task"].isin(tasks) & (model_input_table["mask_path"].fillna("") != "")
    if sources is not None:
        keep &= model_input_table["source"].isin(sources)
    table = model_input_table[keep].copy()
    missing = [split for split in SPLITS if not (table["split"] == split).any()]
    if missing:
        raise ValueError(
            f"No segmentation images (tasks {tasks}, sources {sources or 'all'}, with masks) in split(s) "
            f"{missing}; check segmentation_data and the manifest ({len(model_input_table)} rows)."
        )
    table["mask_convention"] = [conventions.get(source, UNSPECIFIED) for source in table["source"]]
    counts = {split: int((table["split"] == split).sum()) for split in SPLITS}
    check_split_sizes(counts, settings["min_images"], settings["recommended_images"])
    logger.info(
        "Segmentation images per split: %s; per source: %s",
        table["split"].value_counts().to_dict(), table["source"].value_counts().to_dict(),
    )
    return table.reset_index(drop=True)


def _split_rows(table: pd.DataFrame, split: str, limit: int | None = None) -> pd.DataFrame:
    """The split's rows; with ``limit``, the first images of every source in turn, so a
    cap keeps each source (and its mask convention's head) in proportion."""
    rows = table[table["split"] == split]
    if not limit or limit >= len(rows):
        return rows
    share = rows.groupby("source").cumcount() / rows.groupby("source")["source"].transform("size")
    return rows.loc[share.sort_values(kind="stable").index[:limit]].sort_index()



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
    """Build the configured model and train it; best weights by validation loss.

    With ``model_params['convention_heads']`` the model gets one output head per mask
    convention its training images carry, in that order (the first present is the
    default head); each image trains its own convention's head only.
    """
    data_params = model_data_params(data_params, f"segmentation.{model_params['builder']}.data")
    set_global_seed(int(data_params["seed"]))
    resolved = resolve_segmentation_params(training_params)  # unknown keys fail before any work
    image_size = int(data_params["image_size"])
    train = _split_rows(images, "train", data_params["max_train_images"])
    validation = _split_rows(images, "validation", data_params["max_validation_images"])
    architecture = architecture_options(model_params)
    conventions = (
        training_heads(train["mask_convention"], model_params["convention_heads"])
        if model_params.get("convention_heads") else ()
    )
    if conventions:
        architecture["mask_conventions"] = conventions

    def dataset(rows: pd.DataFrame, training: bool):
        return make_segmentation_dataset(
            rows["image_path"], rows["mask_path"], image_size, int(data_params["batch_size"]),
            shuffle=training, augment_params=_augmentation_ops(augmentation_params) if training else None,
            seed=int(data_params["seed"]),
            heads=[head_index(conventions, name) for name in rows["mask_convention"]],
            n_heads=max(1, len(conventions)),
        )

    train_ds, validation_ds = dataset(train, True), dataset(validation, False)
    # The dtype policy (mixed precision) holds while this model is built and trained only.
    with training_device(resolved["mixed_precision"], bool(resolved["multi_gpu"])) as strategy:
        with strategy.scope():
            model = build_segmentation_model(model_params["builder"], input_size=image_size, **architecture)
        logger.info(
            "Training %s (%d parameters) on %d images, validating on %d; mask convention heads %s",
            model_params["builder"], model.count_params(), len(train), len(validation), list(conventions) or "one",
        )
        model, history = train_segmentation_model(model, train_ds, validation_ds, training_params,
                                                  name=str(model_params["builder"]))
    return as_float32(model), history


def evaluate_on_test(
    model: keras.Model,
    images: pd.DataFrame,
    raw_files: Loaders,
    data_params: dict[str, Any],
    postprocessing_params: dict[str, Any],
    preprocessing_params: dict[str, Any],
    compute: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, float], Figure, Figure]:
    """Predict the test split; metrics at model size (before/after post-processing) and at native size.

    At native size the probability map is brought back to each image's own resolution
    (padding removed), thresholded and post-processed there, and compared with the
    original mask file. Per-image scoring runs on the ``compute`` backend. Figures: test
    images of different patients, and the test images with the lowest Dice.
    """
    data_params = model_data_params(data_params, f"segmentation.{model.name}.data")
    test = _split_rows(images, "test")
    per_image, samples = score_images(
        model, test, data_params, postprocessing_params, preprocessing_params, raw_files,
        keep_samples=data_params["n_sample_predictions"], compute=ComputeConfig.from_params(compute),
    )
    figure = plot_sample_predictions(
        *(np.stack(items) for items in list(zip(*samples, strict=True))[:4]),
        titles=[f"{image_id[-28:]}\nDice {dice:.3f}" for *_, dice, image_id in samples],
        model_name=model.name,
    )
    worst = worst_predictions(model, test, per_image, data_params, postprocessing_params,
                              data_params["n_worst_predictions"], "test")
    return per_image, test_metrics_from(per_image), figure, worst


def worst_predictions(
    model: keras.Model,
    rows: pd.DataFrame,
    per_image: pd.DataFrame,
    data_params: dict[str, Any],
    postprocessing_params: dict[str, Any],
    n_images: int,
    split: str,
) -> Figure:
    """The ``n_images`` rows with the lowest Dice in ``per_image`` (at native size where it
    was measured), drawn as the sample predictions are: where a user looks first to tell a
    model's errors from a mask convention or a hard film."""
    column = "dice_native_post" if "dice_native_post" in per_image else "dice_post"
    worst = per_image.nsmallest(n_images, column)
    chosen = rows.set_index("image_id").loc[worst["image_id"]].reset_index()
    chosen["group_id"] = chosen["image_id"]  # one sample per group: each chosen image is its own
    _, samples = score_images(model, chosen, data_params, postprocessing_params, keep_samples=len(chosen))
    scores = worst.set_index("image_id")[column]
    label = "Dice at native size" if column == "dice_native_post" else "Dice"
    return plot_sample_predictions(
        *(np.stack(items) for items in list(zip(*samples, strict=True))[:4]),
        titles=[f"{image_id[-28:]}\n{label} {scores[image_id]:.3f}" for *_, image_id in samples],
        model_name=model.name,
        heading=f"the {len(samples)} {split} images with the lowest {label}",
    )


def stress_test(
    model: keras.Model,
    images: pd.DataFrame,
    data_params: dict[str, Any],
    postprocessing_params: dict[str, Any],
    stress_params: dict[str, Any],
    compute: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Dice on the test images with synthetic opacities pasted inside the true lung, against clean.

    Each kind of ``stress_params['kinds']`` (``OPACITY_KINDS``) is pasted at
    ``strength`` into every test image (the mask still the whole lung), at the model's
    size; the table has one row per image and condition (``clean`` and each kind).
    """
    settings = merge_params(STRESS_TEST_DEFAULTS, stress_params, where="stress_test")
    data_params = model_data_params(data_params, f"segmentation.{model.name}.data")
    test = _split_rows(images, "test")
    config = ComputeConfig.from_params(compute)
    tables = [score_images(model, test, data_params, postprocessing_params, compute=config)[0].assign(condition="clean")]
    for kind in settings["kinds"]:
        paste = opacity_transform(kind, float(settings["strength"]), int(settings["seed"]))
        tables.append(score_images(model, test, data_params, postprocessing_params, transform=paste,
                                   compute=config)[0].assign(condition=kind))
    table = pd.concat(tables, ignore_index=True)
    clean = table[table["condition"] == "clean"].set_index("image_id")["dice_post"]
    table["dice_post_drop"] = [clean[image_id] - dice for image_id, dice in zip(table["image_id"], table["dice_post"], strict=True)]
    metrics = {
        f"stress_dice_post_{condition}": float(rows["dice_post"].mean()) for condition, rows in table.groupby("condition")
    }
    metrics |= {
        f"stress_dice_post_min_{condition}": float(rows["dice_post"].min()) for condition, rows in table.groupby("condition")
    }
    logger.info("Stress test (mean Dice after post-processing): %s", {k: round(v, 3) for k, v in metrics.items()})
    return table[["condition", *[c for c in table.columns if c != "condition"]]], metrics


def test_metrics_from(per_image: pd.DataFrame) -> dict[str, float]:
    """Flat metric dict for MLflow: overall means, and per-source / per-convention Dice."""
    metrics = {f"test_{column}": float(per_image[column].mean()) for column in metric_columns(per_image)}
    for column in ("source", "mask_convention"):
        for group, rows in per_image.groupby(column):
            for metric in ("dice_post", "dice_raw", "dice_native_post"):
                if metric in rows:
                    metrics[f"test_{metric}_{group}"] = float(rows[metric].mean())
    return metrics


def summarise_metrics(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std overall, per source and per mask convention."""
    return summarise_segmentation_metrics(per_image, group_cols=("source", "mask_convention"))


def compare_segmentation_models(**summaries: pd.DataFrame) -> pd.DataFrame:
    """Paper-style comparison (model, mDice, mIoU, MSE) before and after post-processing."""
    stages = {"native_post": "native size, post-processed", "post": "post-processed", "raw": "threshold 0.5"}
    table = pd.concat(
        [comparison_table(summaries, stage=stage).assign(stage=label) for stage, label in stages.items()],
        ignore_index=True,
    )
    logger.info("Segmentation comparison (test split):\n%s", table.to_string(index=False, float_format="%.3f"))
    return table


def combine_models(**models: keras.Model) -> keras.Model:
    """The models' mean probability map, as one Keras model (``build_ensemble``)."""
    return build_ensemble(list(models.values()))


def training_curves(history: dict[str, list[float]], model_params: dict[str, Any], training_params: dict[str, Any]) -> Figure:
    """Loss and soft Dice per epoch, training vs validation, titled with the model and loss."""
    return plot_training_curves(history, model_name=str(model_params["builder"]), loss=str(training_params.get("loss", "")))
