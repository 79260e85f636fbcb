"""Preprocessing pipeline: manifest images → preprocessed PNGs → model input table."""

from kedro.pipeline import Pipeline, node, pipeline

from covid_imaging.pipelines.preprocessing.nodes import build_model_input_table, preprocess_images


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                preprocess_images,
                ["manifest", "raw_images@files", "params:preprocessing", "params:compute"],
                "preprocessed_images",
                name="preprocess_images",
            ),
            node(
                build_model_input_table,
                ["manifest", "split_table", "preprocessed_images", "params:preprocessing"],
                "model_input_table",
                name="build_model_input_table",
            ),
        ]
    )
