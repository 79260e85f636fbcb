"""What the segmentation benchmarks that score a trained model load from the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from covid_imaging.classification.evaluation import cluster_bootstrap_indices, percentile_interval
from covid_imaging.inference.models import load_keras_file


class TrainedSegmentation(NamedTuple):
    model: Any  # the catalog's latest segmentation.<name>.model
    images: Any  # segmentation_images (rows with their split)
    raw_files: Any  # raw_images@files (loaders of the original files, for native-size Dice)
    block: dict  # the model's parameters block
    preprocessing: dict


def load_trained_segmentation(model: str, env: str, model_file: Path | None = None) -> TrainedSegmentation:
    """The catalog's inputs for scoring ``model``; its latest trained version, or ``model_file`` if given."""
    project = Path(__file__).resolve().parents[1]
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env) as session:
        context = session.load_context()
        catalog = context.catalog
        return TrainedSegmentation(
            load_keras_file(str(model_file)) if model_file else catalog.load(f"segmentation.{model}.model"),
            catalog.load("segmentation_images"),
            catalog.load("raw_images@files"), context.params["segmentation"][model], context.params["preprocessing"],
        )


def paired_interval(
    difference: np.ndarray, groups: np.ndarray | None = None, n_bootstrap: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap 95 % interval of the mean of per-image paired differences, resampling
    whole patient groups (``groups``, one id per image: films of one patient are not
    independent), or images when no groups are given."""
    groups = np.arange(len(difference)) if groups is None else groups
    rng = np.random.default_rng(seed)
    means = [difference[indices].mean() for indices in cluster_bootstrap_indices(groups, n_bootstrap, rng)]
    return percentile_interval(np.array(means))


def dice_line(name: str, table, reference=None, groups=None) -> tuple[str, Any]:
    """One printed line for a scored variant (``score_images``' table): mean and minimum
    native-size Dice, per source, and with a ``reference`` (the Dice series of the plain
    variant, by image id) the paired difference with its bootstrap 95 % interval
    (``groups``: the patient of each image id). Returns the line and this variant's Dice."""
    dice = table.set_index("image_id")["dice_native_post"]
    per_source = table.groupby("source")["dice_native_post"].mean()
    line = (f"{name}: Dice {dice.mean():.4f} (min {dice.min():.3f}); "
            + ", ".join(f"{source} {value:.4f}" for source, value in per_source.items()))
    if reference is not None:
        difference = (dice - reference).to_numpy()
        low, high = paired_interval(difference, None if groups is None else groups.loc[dice.index].to_numpy())
        line += (f"; paired difference {difference.mean():+.4f} [{low:+.4f}, {high:+.4f}], "
                 f"better on {int((difference > 0).sum())}, worse on {int((difference < 0).sum())} of {len(difference)}")
    return line, dice
