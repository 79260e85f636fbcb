"""Stratified, patient-grouped train/validation/test splits and k-fold assignment.

Fractions are realised by StratifiedGroupKFold over ``n_bins`` equal bins: with the
default 10 bins, test = 1 bin (10%) and validation = 2 bins (20%) give the 70/20/10
reference design; test 0.2 and validation 0.1 give the 80/20 design with 12.5% of
train as validation. Groups (patients, CT scans) never cross bins, so never cross splits.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

logger = logging.getLogger(__name__)

SPLIT_COLUMNS = ["image_id", "task", "label", "source", "group_id", "split", "cv_fold", "in_training_sample"]


def _bins_for_fraction(fraction: float, n_bins: int, name: str) -> int:
    bins = round(fraction * n_bins)
    if fraction > 0 and bins == 0:
        raise ValueError(f"splits.{name}={fraction} is smaller than one bin of 1/{n_bins}; raise splits.n_bins")
    if abs(bins / n_bins - fraction) > 1e-6:
        logger.warning("splits.%s=%.3f realised as %d/%d = %.3f", name, fraction, bins, n_bins, bins / n_bins)
    return bins


def _round_robin_group_bins(labels: pd.Series, groups: pd.Series, n_bins: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    group_label = pd.DataFrame({"label": labels.to_numpy(), "group": groups.to_numpy()}).groupby("group")["label"].first()
    bin_of_group: dict[str, int] = {}
    offset = 0
    for _, members in group_label.groupby(group_label):
        shuffled = rng.permutation(members.index.to_numpy())
        for position, group in enumerate(shuffled):
            bin_of_group[group] = (offset + position) % n_bins
        offset += len(shuffled)
    return groups.map(bin_of_group).to_numpy()


def _stratified_group_bins(labels: pd.Series, groups: pd.Series, n_bins: int, seed: int) -> np.ndarray:
    """Assign every row to one of ``n_bins`` bins, stratified by label, grouped by group."""
    n_groups = groups.nunique()
    effective_bins = min(n_bins, n_groups)
    if effective_bins < 2:
        return np.zeros(len(labels), dtype=int)
    if labels.value_counts().max() < effective_bins:
        # Too few images per class for StratifiedGroupKFold (tiny data sets): deal the
        # groups of each class round-robin into the bins instead, in a seeded order.
        logger.warning("splits: fewer than %d images per class; round-robin group assignment", effective_bins)
        return _round_robin_group_bins(labels, groups, effective_bins, seed)
    splitter = StratifiedGroupKFold(n_splits=effective_bins, shuffle=True, random_state=seed)
    bins = np.full(len(labels), -1, dtype=int)
    for bin_index, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        bins[held_out] = bin_index
    return bins


def split_rows(table: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Split rows into train/validation/test + CV folds, stratified by ``stratum``, grouped by ``group_id``.

    ``params["rotation"]`` (default 0) shifts which bins are the test and validation
    splits, so that the rotations together test every row once."""
    seed = int(params.get("seed", 42))
    n_bins = int(params.get("n_bins", 10))
    test_bins = _bins_for_fraction(float(params["test_fraction"]), n_bins, "test_fraction")
    validation_bins = _bins_for_fraction(float(params["validation_fraction"]), n_bins, "validation_fraction")
    if test_bins + validation_bins >= n_bins:
        raise ValueError("splits.test_fraction + splits.validation_fraction must leave data for training")
    table = table.reset_index(drop=True)
    bins = _stratified_group_bins(table["stratum"], table["group_id"], n_bins, seed)
    # rotation r: the r-th block of test_bins bins is the test split, the next block(s)
    # validation: r = 0 .. n_bins / test_bins - 1 tests every group once (rotated test folds).
    rotation = int(params.get("rotation", 0))
    if rotation:
        bins = (bins - rotation * test_bins) % n_bins
    split = np.where(bins < test_bins, "test", np.where(bins < test_bins + validation_bins, "validation", "train"))
    if not (split == "train").any():
        # e.g. every image in one group (files named 1.png, 2.png ... are chained into runs)
        raise ValueError(
            f"splits: the {table['group_id'].nunique()} patient/scan group(s) of {len(table)} images leave no "
            f"training images with {n_bins} bins (test {test_bins}, validation {validation_bins}); give patient "
            "ids (ingestion.patient_metadata) or more patients"
        )
    result = table.assign(split=split)

    # k-fold cross-validation over everything that is not test (the test split stays untouched).
    n_folds = int(params.get("n_folds", 0))
    result["cv_fold"] = -1
    if n_folds >= 2:
        development = result["split"] != "test"
        folds = _stratified_group_bins(
            result.loc[development, "stratum"], result.loc[development, "group_id"], n_folds, seed + 1
        )
        result.loc[development, "cv_fold"] = folds
    return result


def make_splits(manifest: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Split all tasks in one go, stratified by task and label, grouped by patient/scan.

    Splitting jointly matters: the same patient can have a segmentation image and a
    classification image (ieee8023), and the classifier uses the segmentation model, so
    a patient must sit in the same split for every task.
    """
    columns = ["image_id", "task", "label", "source", "group_id"]
    table = split_rows(manifest[columns].assign(stratum=manifest["task"] + "/" + manifest["label"]), params)
    table = table.drop(columns="stratum")
    table["in_training_sample"] = table["split"] == "train"
    leaking = table.groupby("group_id")["split"].nunique()
    if (leaking > 1).any():  # cannot happen with grouped folds; guard against future edits
        raise AssertionError(f"groups in several splits: {list(leaking[leaking > 1].index[:5])}")
    for task, rows in table.groupby("task"):
        logger.info("Splits for %s: %s", task, rows["split"].value_counts().to_dict())
    return table[SPLIT_COLUMNS[:-1] + ["in_training_sample"]]


def undersample_training_split(split_table: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Balance classes by random undersampling of the TRAINING split only (seeded).

    Validation and test keep their natural class balance, so their metrics stay honest.
    Rows dropped from training keep ``in_training_sample = False``.
    """
    settings = params.get("undersampling", {})
    if not settings.get("enabled", False):
        return split_table
    rng = np.random.default_rng(int(params.get("seed", 42)))
    table = split_table.copy()
    for task in settings.get("tasks", []):
        train = table[(table["task"] == task) & (table["split"] == "train")]
        if train.empty:
            continue
        smallest = train["label"].value_counts().min()
        for _, rows in train.groupby("label"):
            drop = rng.choice(rows.index.to_numpy(), size=len(rows) - smallest, replace=False)
            table.loc[drop, "in_training_sample"] = False
    return table
