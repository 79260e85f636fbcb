"""Applying trained models to new images (the ``inference`` pipeline, the CLI and the MLflow model)."""
