"""Lung CT classification pipelines (COVID-19 vs non-COVID, the nine-model study)."""

from .pipeline import create_cv_pipeline, create_pipeline

__all__ = ["create_cv_pipeline", "create_pipeline"]
