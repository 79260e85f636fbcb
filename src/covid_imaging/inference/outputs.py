"""The tables of an inference run: predictions and, when the source has them, external metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from covid_imaging.classification.evaluation import classification_report_table
from covid_imaging.inference.engine import ImageResult, InferenceModels
from covid_imaging.pipelines.ingestion.groups import assign_group_ids
from covid_imaging.segmentation.metrics import summarise_segmentation_metrics

LEADING_COLUMNS = [
    "image_id", "image_key", "source", "task", "modality", "label", "group_id", "width", "height",
    "segmentation_model",
    "lung_area_fraction", "lung_area_px", "right_lung_area_px", "left_lung_area_px", "n_components",
    "mean_lung_probability", "qc_flags", "qc_no_lung", "qc_one_lung", "qc_implausible_area",
    "qc_many_components", "qc_low_confidence", "dice_native", "iou_native", "mask_file", "overlay_file",
]


def predictions_columns(present: Iterable[str]) -> list[str]:
    """The column order of the predictions table: the known columns first (those present),
    then the others (each classifier's) in the order given; with none, the first six."""
    present = list(dict.fromkeys(present))
    if not present:
        return LEADING_COLUMNS[:6]
    leading = [c for c in LEADING_COLUMNS if c in present]
    return leading + [c for c in present if c not in leading]


def predictions_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per image: the known columns first (when present), then each classifier's."""
    table = pd.DataFrame(list(rows))
    if table.empty:
        return pd.DataFrame(columns=LEADING_COLUMNS[:6])
    return table[predictions_columns(table.columns)]


def external_segmentation_tables(predictions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Per image Dice/IoU at native resolution against the source's masks, and their summary
    (mean, std, min overall and per source); None when no image came with a mask."""
    if "dice_native" not in predictions.columns:
        return None
    scored = predictions[predictions["dice_native"].notna()]
    if scored.empty:
        return None
    per_image = scored[["image_id", "source", "dice_native", "iou_native"]].rename(
        columns={"dice_native": "dice", "iou_native": "iou"}
    ).reset_index(drop=True)
    return per_image, summarise_segmentation_metrics(per_image, group_cols=("source",))


def external_classification_table(
    results: Sequence[ImageResult], models: InferenceModels, n_bootstrap: int, confidence: float, seed: int
) -> pd.DataFrame | None:
    """The classification metrics (bootstrap CIs, overall and per source) of every classifier
    on the images whose label is one of its classes; None when no image has such a label.

    The bootstrap resamples patients (several images of one patient or slices of one scan
    are one unit), as in the pipelines: the ingestion's ``group_id`` of each image (its
    ``patient_metadata`` file where one is configured, else the file-name rules)."""
    tables = []
    for model in models.classifiers:
        classes = list(model.spec.classes)  # a label counts as its data.class_groups class, as in training
        scored = [r for r in results
                  if model.namespace in r.probabilities and model.spec.class_of(str(r.row.get("label"))) is not None]
        if not scored:
            continue
        y_true = np.array([classes.index(model.spec.class_of(str(r.row["label"]))) for r in scored])
        y_prob = np.stack([r.probabilities[model.namespace] for r in scored])
        sources = [str(r.row.get("source", "")) for r in scored]
        table = classification_report_table(
            y_true, y_prob, classes, groups=sources, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed,
            clusters=_patient_groups(scored, sources),
        )
        tables.append(table.assign(model=model.namespace, model_version=model.version))
    if not tables:
        return None
    combined = pd.concat(tables, ignore_index=True)
    return combined[["model", "model_version", *[c for c in combined.columns if c not in ("model", "model_version")]]]


def _patient_groups(results: Sequence[ImageResult], sources: list[str]) -> np.ndarray:
    """Each image's ingestion group; images without one (rows not built by ingestion) are
    grouped by the ingestion's file-name rules."""
    given = [str(r.row.get("group_id") or "") for r in results]
    if all(given):
        return np.array(given)
    derived = assign_group_ids(pd.DataFrame({"image_key": [str(r.row["image_key"]) for r in results],
                                             "source": sources}))
    return np.array([group or fallback for group, fallback in zip(given, derived, strict=True)])


def class_counts(predictions: pd.DataFrame, models: InferenceModels) -> dict[str, dict[str, int]]:
    """``{classifier: {class: number of images predicted as it}}``, every class listed."""
    counts = {}
    for model in models.classifiers:
        column = f"{model.spec.name}.prediction"
        found = predictions[column].value_counts() if column in predictions.columns else pd.Series(dtype=int)
        counts[model.namespace] = {cls: int(found.get(cls, 0)) for cls in model.spec.classes}
    return counts


def qc_counts(predictions: pd.DataFrame) -> dict[str, int]:
    """Images carrying each QC flag."""
    from covid_imaging.inference.engine import QC_FLAGS  # noqa: PLC0415

    return {flag: int(predictions[f"qc_{flag}"].fillna(False).astype(bool).sum()) if f"qc_{flag}" in predictions else 0
            for flag in QC_FLAGS}
