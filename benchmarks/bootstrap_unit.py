"""The bootstrap CIs of saved test predictions, resampling images or patient groups.

Recomputes the balanced accuracy's 95 % CI of every classifier whose test predictions
a pipeline run has written (``<model>/test_predictions.csv``), once resampling images
one by one and once resampling whole patient groups (``group_id`` of the model input
table; a cluster bootstrap, ``evaluation.bootstrap_unit: group``), with the pipeline's
bootstrap settings (500 resamples, seed 42). Shows how much the unit changes intervals
measured before the default became ``group``. Run after a classification run, e.g.::

    kedro run --pipelines=classification --env=shared_data
    python benchmarks/bootstrap_unit.py

Prints one row per model: balanced accuracy, both intervals, images and groups. Nothing
is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from covid_imaging.classification.evaluation import (
    MACRO,
    OVERALL_SCOPE,
    classification_report_table,
)


def balanced_accuracy_interval(predictions: pd.DataFrame, clusters: pd.Series | None, seed: int) -> pd.Series:
    classes = [column.removeprefix("p_") for column in predictions.columns if column.startswith("p_")]
    y_true = predictions["label"].map({name: index for index, name in enumerate(classes)}).to_numpy()
    table = classification_report_table(
        y_true, predictions[[f"p_{name}" for name in classes]].to_numpy(), classes, n_bootstrap=500, seed=seed,
        clusters=None if clusters is None else clusters.to_numpy(),
    )
    return table[(table["scope"] == OVERALL_SCOPE) & (table["class"] == MACRO)
                 & (table["metric"] == "balanced_accuracy")].iloc[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions-root", default="data/07_model_output/shared_data/classification")
    parser.add_argument("--model-input-table", default="data/05_model_input/shared_data/model_input_table.csv")
    parser.add_argument("--seed", type=int, default=42, help="the models' data.seed (the pipeline's bootstrap seed)")
    args = parser.parse_args()
    files = sorted(Path(args.predictions_root).glob("*/test_predictions.csv"))
    if not files or not Path(args.model_input_table).exists():
        raise SystemExit(f"no predictions under {args.predictions_root} or no {args.model_input_table}: run the pipeline first")
    groups = pd.read_csv(args.model_input_table)[["image_id", "group_id"]]
    print(f"{'model':24s} {'bal_acc':>7s} {'images: 95% CI':>16s} {'groups: 95% CI':>16s} {'images':>6s} {'groups':>6s}")
    for path in files:
        predictions = pd.read_csv(path).merge(groups, on="image_id", how="left", validate="one_to_one")
        if predictions["group_id"].isna().any():
            raise SystemExit(f"{path}: images missing from {args.model_input_table}")
        by_image = balanced_accuracy_interval(predictions, None, args.seed)
        by_group = balanced_accuracy_interval(predictions, predictions["group_id"], args.seed)
        print(f"{path.parent.name:24s} {by_image['value']:7.3f} [{by_image['ci_low']:.3f}, {by_image['ci_high']:.3f}]"
              f" [{by_group['ci_low']:.3f}, {by_group['ci_high']:.3f}] {by_image['n']:6d} {by_group['n_clusters']:6d}")


if __name__ == "__main__":
    main()
