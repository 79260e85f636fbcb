"""Lung CT classification nodes (COVID-19 vs non-COVID, the nine-model study).

Training, evaluation and Grad-CAM are the X-ray classifiers' nodes
(:mod:`covid_imaging.pipelines.classification.nodes`, one training core); this module
adds what is CT-specific: selecting the CT slices under a split protocol, the effective
input size of each model at the run's compute budget, the basic CNN's per-layer
activation maps and the comparison table.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import keras
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from covid_imaging.classification.models import KERAS_APPLICATIONS
from covid_imaging.compute import call_in_fresh_process
from covid_imaging.params import merge_params
from covid_imaging.pipelines.classification.nodes import (
    CLASSIFICATION_DATA_DEFAULTS,
    _checked_evaluation,
    _image_paths,
    _rows,
    checked_data,
    compare_classifiers,
    evaluate_probabilities,
    seed_scores,
    selected_seed,
    train_over_seeds,
)
from covid_imaging.pipelines.splits.nodes import split_rows, undersample_training_split
from covid_imaging.registry import MODALITY_COLUMN, check_modality, with_modality
from covid_imaging.training.inputs import resize_to_model_input

logger = logging.getLogger(__name__)

MODALITY = "ct"
SPLIT_PROTOCOLS = ("grouped", "random_slices")
# A CT model's data block: the classifiers' keys, and a cap on the reference input size
# (null: the reference size; the CPU defaults cap it per model).
CT_DATA_DEFAULTS: dict[str, Any] = {**CLASSIFICATION_DATA_DEFAULTS, "image_variant": "whole", "max_image_size": None}
# ct_classification_cv (rotated test folds): how the folds of one model are trained.
CV_DEFAULTS: dict[str, Any] = {
    # Each model's folds in a new process that ends with them: TensorFlow keeps memory for
    # every network built in a process, and the study builds 5 x 9 of them.
    "fresh_process": True,
}
# What a CT model may see of a slice: its preprocessed (gray, square) image and labels.
# Raw-file properties (channel count, bit depth, format, original size) are not passed on:
# in sarscov2_ct the channel count differs by class (RGB vs RGBA).
CT_COLUMNS = ["image_id", "task", MODALITY_COLUMN, "label", "source", "group_id", "split", "cv_fold",
              "in_training_sample", "image_path"]


def select_ct_images(
    model_input_table: pd.DataFrame, params: dict[str, Any], splits: dict[str, Any]
) -> pd.DataFrame:
    """The CT slices (modality ``ct`` only) of the classes and sources configured, split by
    ``params["split_protocol"]``:

    * ``grouped`` (default): grouped by scan (UCSD by source paper / runs of ids,
      SARS-CoV-2 by linked runs of slice numbers, see ``pipelines/ingestion/groups.py``):
      no scan in two splits;
    * ``random_slices``: the reference protocol, every slice its own group, so
      neighbouring slices of one scan land on both sides: optimistic, for comparison only.

    Both use the ``splits`` fractions, bins and seed (``params["splits"]`` overrides them
    for CT), stratified by source x label (the
    project's joint split is stratified by task x label only, which with the coarse
    SARS-CoV-2 scan groups can put a source's two classes in different splits).

    Either way the training split is then undersampled to balanced classes within the
    selection (validation and test keep their prevalence).

    Cross-source test (``train_sources`` and ``test_sources``, disjoint lists): the
    models train and validate on the train and validation slices of ``train_sources``
    and are tested on every slice of ``test_sources`` (never seen in training).

    The table keeps only :data:`CT_COLUMNS` (no channel count or file format), with
    ``default_variant = whole`` (CT slices are never lung-masked), the protocol and the
    ``evaluation`` it serves (``all sources`` or ``<train> -> <test>``).
    """
    protocol = params.get("split_protocol", "grouped")
    if protocol not in SPLIT_PROTOCOLS:
        raise ValueError(f"ct_classification_data.split_protocol must be one of {SPLIT_PROTOCOLS}, got {protocol!r}")
    table = with_modality(model_input_table)
    table = table[table[MODALITY_COLUMN] == MODALITY]
    classes = params.get("classes")
    if classes:
        table = table[table["label"].isin(classes)]
    sources = params.get("sources")
    if sources:
        table = table[table["source"].isin(sources)]
    if table.empty:
        raise ValueError(f"No CT slices of classes {classes} and sources {sources} in the model input table")
    table = check_modality(table[CT_COLUMNS].reset_index(drop=True), MODALITY, "select_ct_images")
    # Both protocols split the CT slices alike (the splits' fractions, bins and seed),
    # stratified by source x label so that every source brings both classes to every
    # split where it can; they differ only in the groups: scans, or single slices.
    splits = {**splits, **(params.get("splits") or {})}  # CT overrides of the project's fractions
    slices = table.drop(columns=["split", "cv_fold", "in_training_sample"])
    groups = slices["group_id"] if protocol == "grouped" else slices["image_id"]
    resplit = split_rows(slices.assign(group_id=groups, stratum=slices["source"] + "/" + slices["label"]), splits)
    table = resplit.drop(columns="stratum").assign(
        group_id=slices["group_id"].to_numpy(), in_training_sample=False
    )[CT_COLUMNS]
    table, evaluation = _cross_source(table, params.get("train_sources"), params.get("test_sources"))
    # The training split, undersampled to balanced classes within this selection (seeded).
    table = undersample_training_split(
        table.assign(in_training_sample=table["split"] == "train").reset_index(drop=True),
        {"seed": splits.get("seed", 42), "undersampling": {"enabled": True, "tasks": sorted(set(table["task"]))}},
    )[CT_COLUMNS]
    table = table.assign(default_variant="whole", split_protocol=protocol, evaluation=evaluation)
    counts = table.groupby(["split", "source", "label"]).size().unstack(fill_value=0)
    logger.info("CT slices (%s split):\n%s", protocol, counts.to_string())
    if protocol == "grouped":
        leaking = table.groupby("group_id")["split"].nunique()
        if (leaking > 1).any():
            raise AssertionError(f"CT scan groups in several splits: {list(leaking[leaking > 1].index[:5])}")
    return table


def select_ct_folds(
    model_input_table: pd.DataFrame, params: dict[str, Any], splits: dict[str, Any]
) -> pd.DataFrame:
    """The CT slices under every rotation of the split (column ``fold``): in fold ``r`` the
    ``r``-th block of bins is the test split and the next one validation (see
    :func:`~covid_imaging.pipelines.splits.nodes.split_rows`), so that each slice, and
    under the grouped protocol each scan, is tested exactly once, by a model that never
    saw it. Fold 0 is :func:`select_ct_images`' split. With the CT default of 5 bins
    (test 1, validation 1): 5 folds of 60/20/20.

    Cross-source selections (``train_sources``/``test_sources``) already test every
    slice of the test sources and are refused here.
    """
    if params.get("train_sources") or params.get("test_sources"):
        raise ValueError("ct_classification_data: rotated test folds are for one pool of sources; "
                         "unset train_sources and test_sources (a cross-source run tests every slice already)")
    merged = {**splits, **(params.get("splits") or {})}
    n_bins = int(merged.get("n_bins", 10))
    test_bins = round(float(merged["test_fraction"]) * n_bins)
    if test_bins < 1 or n_bins % test_bins:
        raise ValueError(f"ct_classification_data.splits: rotated test folds need test_fraction x n_bins to divide "
                         f"n_bins, got test_fraction {merged['test_fraction']} of {n_bins} bins")
    folds = []
    for rotation in range(n_bins // test_bins):
        rotated = {**params, "splits": {**(params.get("splits") or {}), "rotation": rotation}}
        folds.append(select_ct_images(model_input_table, rotated, splits).assign(fold=rotation))
    table = pd.concat(folds, ignore_index=True).assign(evaluation=f"{len(folds)} rotated test folds")
    tested = table[table["split"] == "test"].groupby("image_id").size()
    slices = set(table["image_id"])
    if len(tested) != len(slices) or (tested != 1).any():
        raise AssertionError(f"rotated test folds must test every slice once: {len(tested)} of {len(slices)} tested, "
                             f"{int((tested > 1).sum())} more than once")
    logger.info("CT rotated test folds: %d folds, test slices per fold %s", len(folds),
                table[table["split"] == "test"].groupby("fold").size().to_dict())
    return table


def _cross_source(
    table: pd.DataFrame, train_sources: list[str] | None, test_sources: list[str] | None
) -> tuple[pd.DataFrame, str]:
    if not train_sources and not test_sources:
        return table, "all sources"
    if not train_sources or not test_sources or set(train_sources) & set(test_sources):
        raise ValueError(
            "ct_classification_data.train_sources and test_sources go together and must not overlap, "
            f"got {train_sources} and {test_sources}"
        )
    for name, sources in (("train_sources", train_sources), ("test_sources", test_sources)):
        missing = sorted(set(sources) - set(table["source"]))
        if missing:
            raise ValueError(f"ct_classification_data.{name}: no CT slices of {missing}")
    development = table[table["source"].isin(train_sources) & (table["split"] != "test")]
    test = table[table["source"].isin(test_sources)].assign(split="test", cv_fold=-1, in_training_sample=False)
    evaluation = f"{'+'.join(train_sources)} -> {'+'.join(test_sources)}"
    return pd.concat([development, test], ignore_index=True), evaluation


def train_test_folds(
    folds: pd.DataFrame, model_params: dict[str, Any], training: dict[str, Any], data: dict[str, Any],
    evaluation: dict[str, Any], cv: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, float]]:
    """One model per rotated fold (:func:`select_ct_folds`): trained as the single-split
    pipeline trains it (:func:`~covid_imaging.pipelines.classification.nodes.train_over_seeds`,
    seed chosen on the fold's validation split), then applied to the fold's test slices;
    with ``cv.fresh_process`` all in a new process that ends with them.

    Returns the out-of-fold class probabilities (one row per slice, with its ``fold``
    and scan) and per fold the validation and test balanced accuracy and the epochs run,
    with their mean and standard deviation over the folds.
    """
    cv = merge_params(CV_DEFAULTS, cv, where="ct_classification_cv")
    arguments = (folds, model_params, training, data, evaluation)
    return call_in_fresh_process(_train_test_folds, *arguments) if cv["fresh_process"] else _train_test_folds(*arguments)


def _train_test_folds(
    folds: pd.DataFrame, model_params: dict[str, Any], training: dict[str, Any], data: dict[str, Any],
    evaluation: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, float]]:
    tables, metrics = [], {}
    for fold, rows in folds.groupby("fold", sort=True):
        test, fold_metrics = _train_test_fold(rows.drop(columns="fold").reset_index(drop=True), model_params,
                                              training, data, evaluation)
        tables.append(test.assign(fold=int(fold)))
        metrics.update({f"fold{int(fold)}_{name}": value for name, value in fold_metrics.items()})
        logger.info("%s fold %d: validation %.3f, test %.3f balanced accuracy (%d test slices)", model_params["builder"],
                    fold, fold_metrics["validation_balanced_accuracy"], fold_metrics["test_balanced_accuracy"], len(test))
    for name in ("validation_balanced_accuracy", "test_balanced_accuracy"):
        values = [metrics[f"fold{int(fold)}_{name}"] for fold in sorted(folds["fold"].unique())]
        metrics[f"fold_{name}_mean"] = float(np.mean(values))
        metrics[f"fold_{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    metrics["n_folds"] = float(len(tables))
    return pd.concat(tables, ignore_index=True), metrics


def _train_test_fold(
    rows: pd.DataFrame, model_params: dict[str, Any], training: dict[str, Any], data: dict[str, Any],
    evaluation: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, float]]:
    _, history, seed_predictions = train_over_seeds(rows, model_params, training, data, evaluation)
    # The kept seed's test probabilities were computed while training: no second pass.
    classes = list(data["classes"])
    scores = seed_scores(seed_predictions, classes)
    seed = selected_seed(scores, _checked_evaluation(evaluation)["select_seed"])
    probabilities = seed_predictions[(seed_predictions["split"] == "test") & (seed_predictions["seed"] == seed)]
    test = _rows(rows, data, "test")[["image_id", "source", "label", "group_id"]]
    predictions = test.merge(probabilities[["image_id"] + [f"p_{name}" for name in classes]], on="image_id",
                             how="left", validate="one_to_one")
    return predictions, {
        "validation_balanced_accuracy": scores["validation", seed],
        "test_balanced_accuracy": scores["test", seed],
        "epochs": float(len(history.get("loss", []))),
    }


def evaluate_out_of_fold(
    fold_predictions: pd.DataFrame, data: dict[str, Any], evaluation: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, float], Figure, Figure, pd.DataFrame]:
    """The classification evaluation (report with bootstrap CIs over scans, per source,
    confusion matrix, ROC) of every slice's out-of-fold prediction at once: each from
    the model of the one fold that tested it."""
    probabilities = fold_predictions[[f"p_{name}" for name in data["classes"]]].to_numpy()
    report, metrics, confusion, roc, predictions = evaluate_probabilities(fold_predictions, probabilities, data,
                                                                          evaluation)
    metrics["test_n_folds"] = float(fold_predictions["fold"].nunique())
    return report, metrics, confusion, roc, predictions.assign(fold=fold_predictions["fold"].to_numpy(),
                                                               group_id=fold_predictions["group_id"].to_numpy())


def model_data(data: dict[str, Any], model: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """A model's data settings at this run's compute budget, and its sizes as metrics.

    ``data.image_size`` is the model's registered (reference) input size;
    ``data.max_image_size`` (set per model at the CPU defaults; ``null`` in conf/gpu)
    caps it, never below what the builder accepts (InceptionV3: 75). The sizes go to
    MLflow (``input_size``, ``reference_input_size``) and to the comparison table.
    """
    data = checked_data(data, CT_DATA_DEFAULTS)
    reference = int(data["image_size"])
    cap = data.pop("max_image_size")  # applied here; the X-ray nodes downstream do not know it
    size = reference if cap is None else min(reference, int(cap))
    application = KERAS_APPLICATIONS.get(str(model["builder"]).lower())
    size = max(size, application.min_input_size if application else 1)
    return {**data, "image_size": size}, {"input_size": float(size), "reference_input_size": float(reference)}


def layer_activation_maps(
    model: keras.Model, inputs: pd.DataFrame, data: dict[str, Any], params: dict[str, Any]
) -> Figure:
    """Per-layer activation maps (the reference's per-layer heat maps of the basic CNN):
    for ``per_class`` test slices per class, the input and the channel-mean activation of
    every convolution, pooling and dropout block output, each scaled to [0, 1]."""
    test = _rows(inputs, data, "test")
    sample = test.groupby("label", sort=True).head(int(params.get("per_class", 1)))
    size = int(data["image_size"])
    images = np.stack([  # as the model was trained
        resize_to_model_input(cv2.imread(path, cv2.IMREAD_GRAYSCALE)[..., None], size).numpy()
        for path in _image_paths(sample, data)
    ])
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D | keras.layers.MaxPooling2D)]
    if not layers:
        raise ValueError(f"{model.name} has no convolution or pooling layer to show")
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    activations = probe(images, training=False)
    activations = activations if isinstance(activations, list | tuple) else [activations]
    figure = Figure(figsize=(1.8 * (len(layers) + 1), 2.0 * len(sample)))
    for row, (image, label) in enumerate(zip(images, sample["label"], strict=True)):
        axis = figure.add_subplot(len(sample), len(layers) + 1, row * (len(layers) + 1) + 1)
        axis.imshow(image[..., 0], cmap="gray")
        axis.set_title(f"{label}\ninput", fontsize=7)
        axis.axis("off")
        for column, (layer, activation) in enumerate(zip(layers, activations, strict=True), start=2):
            heat = np.asarray(activation[row]).mean(axis=-1)
            heat = (heat - heat.min()) / (np.ptp(heat) or 1.0)
            axis = figure.add_subplot(len(sample), len(layers) + 1, row * (len(layers) + 1) + column)
            axis.imshow(heat, cmap="jet")
            axis.set_title(f"{layer.name}\n{heat.shape[0]}x{heat.shape[1]}", fontsize=7)
            axis.axis("off")
    figure.tight_layout()
    return figure


def _report_value(report: pd.DataFrame, class_name: str, metric: str, column: str = "value") -> float:
    rows = report[(report["scope"] == "overall") & (report["class"] == class_name) & (report["metric"] == metric)]
    # A report read back from CSV may hold '' for an undefined value (or, written before
    # cluster counts were reported, no n_clusters column).
    if not len(rows) or column not in rows:
        return float("nan")
    return float(pd.to_numeric(rows[column], errors="coerce").iloc[0])


def compare_ct_classifiers(images: pd.DataFrame, **results: Any) -> pd.DataFrame:
    """One row per CT model: split protocol, evaluation (all sources or cross-source), input size, test metrics (macro) with the
    bootstrap 95% CI of balanced accuracy and AUC, COVID-class precision/recall/F1,
    per-source accuracy, test size in slices and in scans (the units the CIs resample)
    and the count of all-zero Grad-CAM maps.

    ``results`` keys: ``<model>__test``, ``<model>__gradcam``, ``<model>__sizes``
    (dicts) and ``<model>__report`` (the metrics report table).
    """
    reports = {key.rsplit("__", 1)[0]: value for key, value in results.items() if key.endswith("__report")}
    table = compare_classifiers(**{key: value for key, value in results.items() if not key.endswith("__report")})
    for name, report in reports.items():
        row = table["model"] == name
        for metric in ("balanced_accuracy", "roc_auc"):
            for bound in ("ci_low", "ci_high"):
                table.loc[row, f"test_{metric}_{bound}"] = _report_value(report, "macro", metric, bound)
        for metric in ("precision", "recall", "f1"):
            table.loc[row, f"test_covid_{metric}"] = _report_value(report, "covid", metric)
        table.loc[row, "n_test"] = _report_value(report, "macro", "accuracy", "n")
        table.loc[row, "n_test_scans"] = _report_value(report, "macro", "accuracy", "n_clusters")
    protocol = str(images["split_protocol"].iloc[0]) if len(images) else ""
    table.insert(1, "split_protocol", protocol)
    table.insert(2, "evaluation", str(images["evaluation"].iloc[0]) if "evaluation" in images and len(images) else "")
    first = ["model", "split_protocol", "evaluation", "input_size", "reference_input_size", "n_test", "n_test_scans",
             "test_accuracy",
             "test_balanced_accuracy", "test_balanced_accuracy_ci_low", "test_balanced_accuracy_ci_high",
             "test_roc_auc", "test_roc_auc_ci_low", "test_roc_auc_ci_high"]
    ordered = [c for c in first if c in table.columns] + [c for c in table.columns if c not in first]
    table = table[ordered]
    logger.info("CT classification comparison (test split, %s):\n%s", protocol,
                table.to_string(index=False, float_format="%.3f"))
    return table
