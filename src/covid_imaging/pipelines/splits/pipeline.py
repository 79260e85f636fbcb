"""Splits pipeline: stratified, grouped train/validation/test with k-fold and undersampling."""

from kedro.pipeline import Pipeline, node, pipeline

from covid_imaging.pipelines.splits.nodes import make_splits, undersample_training_split


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(make_splits, ["manifest", "params:splits"], "grouped_splits", name="make_splits"),
            node(
                undersample_training_split,
                ["grouped_splits", "params:splits"],
                "split_table",
                name="undersample_training_split",
            ),
        ]
    )
