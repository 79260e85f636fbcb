"""Chest X-ray classification pipelines."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
