"""Inference on new images: ``kedro run --pipeline=inference --params=inference.source=<folder>``."""

from covid_imaging.pipelines.inference.pipeline import create_model_pipeline, create_pipeline

__all__ = ["create_model_pipeline", "create_pipeline"]
