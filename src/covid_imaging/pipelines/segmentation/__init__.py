"""Segmentation pipelines (one namespaced copy of a template per model)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
