"""What the segmentation benchmarks that score a trained model load from the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project


class TrainedSegmentation(NamedTuple):
    model: Any  # the catalog's latest segmentation.<name>.model
    images: Any  # segmentation_images (rows with their split)
    raw_files: Any  # raw_images@files (loaders of the original files, for native-size Dice)
    block: dict  # the model's parameters block
    preprocessing: dict


def load_trained_segmentation(model: str, env: str) -> TrainedSegmentation:
    project = Path(__file__).resolve().parents[1]
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env) as session:
        context = session.load_context()
        catalog = context.catalog
        return TrainedSegmentation(
            catalog.load(f"segmentation.{model}.model"), catalog.load("segmentation_images"),
            catalog.load("raw_images@files"), context.params["segmentation"][model], context.params["preprocessing"],
        )
