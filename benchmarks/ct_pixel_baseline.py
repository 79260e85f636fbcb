"""How much a classifier without a network gets from the CT slices, under each split.

Gradient boosting (scikit-learn) on 32 x 32 gray pixels of the preprocessed slices,
on exactly the slices and splits that ``kedro run --pipeline=ct_classification`` uses
(``select_ct_images`` with the parameters of ``conf/base``): the grouped-by-scan split,
the reference's random slice split, each of them also as rotated test folds
(``select_ct_folds``: every slice tested once, by a model that did not train on its
scan; what ``kedro run --pipeline=ct_classification_cv`` does), and the two
cross-source directions. It answers two
questions before any network is trained: is the task learnable from these slices at
this size at all (a floor for the CT models), and how large is the leakage gap between
the protocols for a model that cannot memorise neighbouring slices on purpose.

Run after the data preparation of the environment, e.g.::

    kedro run --pipeline=data_preparation --env=shared_data
    python benchmarks/ct_pixel_baseline.py

Prints one row per evaluation: test balanced accuracy with its bootstrap 95 % CI (scans
resampled), ROC AUC, the test size in slices and scans (rotated folds: the mean training
sample per fold, and every slice). Nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from covid_imaging.classification.evaluation import bootstrap_metric_samples, percentile_interval
from covid_imaging.pipelines.ct_classification.nodes import select_ct_folds, select_ct_images

CROSS_SOURCE = (("ucsd_covid_ct", "sarscov2_ct"), ("sarscov2_ct", "ucsd_covid_ct"))


def _pixels(paths: pd.Series, size: int) -> np.ndarray:
    images = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise SystemExit(f"{path}: not readable; run the data preparation first")
        images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).ravel() / 255.0)
    return np.stack(images)


def fit_predict(table: pd.DataFrame, size: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The test rows of one split and their COVID probabilities, from a model fitted on its training sample."""
    train = table[(table["split"] == "train") & table["in_training_sample"]]
    test = table[table["split"] == "test"]
    model = HistGradientBoostingClassifier(random_state=seed).fit(
        _pixels(train["image_path"], size), (train["label"] == "covid").to_numpy(int)
    )
    return test, model.predict_proba(_pixels(test["image_path"], size))[:, 1]


def score(test: pd.DataFrame, p_covid: np.ndarray, n_train: int, seed: int) -> dict[str, float]:
    y_test = (test["label"] == "covid").to_numpy(int)
    probabilities = np.stack([1 - p_covid, p_covid], axis=1)
    # Scans resampled, not slices (the pipeline's evaluation.bootstrap_unit: group).
    samples = bootstrap_metric_samples(y_test, probabilities, n_classes=2, seed=seed, clusters=test["group_id"])
    low, high = percentile_interval(samples["macro:balanced_accuracy"])
    return {
        "n_train": n_train, "n_test": len(test), "n_test_scans": test["group_id"].nunique(),
        "balanced_accuracy": balanced_accuracy_score(y_test, p_covid > 0.5),
        "ci_low": low, "ci_high": high, "roc_auc": roc_auc_score(y_test, p_covid),
    }


def evaluate(table: pd.DataFrame, size: int, seed: int) -> dict[str, float]:
    """One split (``select_ct_images``), or rotated test folds (``select_ct_folds``, column
    ``fold``): one model per fold, every slice's out-of-fold probability scored at once."""
    folds = [rows for _, rows in table.groupby("fold")] if "fold" in table else [table]
    predicted = [fit_predict(rows, size, seed) for rows in folds]
    test = pd.concat([rows for rows, _ in predicted])
    n_train = int(np.mean([((rows["split"] == "train") & rows["in_training_sample"]).sum() for rows in folds]))
    return score(test, np.concatenate([p for _, p in predicted]), n_train, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-input-table", default="data/05_model_input/shared_data/model_input_table.csv")
    parser.add_argument("--size", type=int, default=32, help="pixels per side (the basic CNN's input)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table_path = Path(args.model_input_table)
    if not table_path.exists():
        raise SystemExit(f"{table_path}: missing; run `kedro run --pipeline=data_preparation --env=...` first")
    model_input_table = pd.read_csv(table_path)
    conf = Path("conf/base/parameters")
    ct_params = yaml.safe_load((conf / "ct_classification.yml").read_text())["ct_classification_data"]
    splits = yaml.safe_load((conf / "splits.yml").read_text())["splits"]

    protocols = ("grouped", "random_slices")
    evaluations = [(protocol, {"split_protocol": protocol}, select_ct_images) for protocol in protocols]
    evaluations += [(f"{protocol}, rotated test folds", {"split_protocol": protocol}, select_ct_folds)
                    for protocol in protocols]
    evaluations += [(f"{train} -> {test}", {"train_sources": [train], "test_sources": [test]}, select_ct_images)
                    for train, test in CROSS_SOURCE]
    print(f"HistGradientBoosting on {args.size}x{args.size} gray pixels, COVID-19 vs non-COVID CT slices")
    print(f"{'evaluation':32s} {'n_train':>7s} {'n_test':>6s} {'scans':>5s} {'bal_acc':>7s} {'95% CI':>13s} {'AUC':>6s}")
    for name, overrides, select in evaluations:
        table = select(model_input_table, {**ct_params, **overrides}, splits)
        row = evaluate(table, args.size, args.seed)
        print(f"{name:32s} {row['n_train']:7d} {row['n_test']:6d} {row['n_test_scans']:5d} {row['balanced_accuracy']:7.3f} "
              f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] {row['roc_auc']:6.3f}")


if __name__ == "__main__":
    main()
