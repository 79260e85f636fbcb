"""Ingestion pipeline: raw files (local folder or Azure container) → manifest + rejected report."""

from kedro.pipeline import Pipeline, node, pipeline

from covid_imaging.pipelines.ingestion.nodes import build_manifest


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                build_manifest,
                ["raw_images@files", "params:ingestion", "params:compute"],
                ["manifest", "rejected_files"],
                name="build_manifest",
            )
        ]
    )
