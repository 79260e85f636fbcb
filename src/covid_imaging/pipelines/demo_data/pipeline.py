"""Demo data pipeline: writes the synthetic demo set to data/01_raw/demo."""

from kedro.pipeline import Pipeline, node, pipeline

from covid_imaging.pipelines.demo_data.nodes import generate_demo_images


def create_pipeline(**kwargs) -> Pipeline:
    # "raw_images@generated" and "raw_images@files" are one data set seen two ways
    # (Kedro transcoding): ingestion waits for the generator when both are in a run.
    return pipeline(
        [node(generate_demo_images, "params:demo_data", "raw_images@generated", name="generate_demo_images")]
    )
