"""Leave-one-source-out evaluation of lung segmentation (``--pipeline=segmentation_cross_source``)."""

from covid_imaging.pipelines.segmentation_cross_source.pipeline import create_pipeline

__all__ = ["create_pipeline"]
