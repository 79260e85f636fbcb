"""Too few segmentation images: a refusal below the minimum, a warning below the recommendation."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from covid_imaging.pipelines.segmentation.nodes import TooFewImagesError, select_segmentation_images


def _table(train: int, validation: int, test: int) -> pd.DataFrame:
    splits = ["train"] * train + ["validation"] * validation + ["test"] * test
    return pd.DataFrame({"image_id": [f"i{n}" for n in range(len(splits))], "split": splits, "task": "segmentation",
                         "source": "mine", "mask_path": "m.png"})


def test_five_images_are_refused_naming_the_counts_and_the_parameter():
    with pytest.raises(TooFewImagesError, match=r"\{'train': 2, 'validation': 2, 'test': 1\}.*min_images"):
        select_segmentation_images(_table(2, 2, 1), {"tasks": None})


def test_small_but_usable_sets_warn(caplog):
    with caplog.at_level(logging.WARNING):
        rows = select_segmentation_images(_table(20, 4, 4), {"tasks": None})
    assert len(rows) == 28 and "not reliable" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        select_segmentation_images(_table(20, 4, 4), {"tasks": None, "recommended_images": {"train": 10, "validation": 2, "test": 2}})
    assert "not reliable" not in caplog.text
    select_segmentation_images(_table(2, 1, 1), {"min_images": {"train": 2, "validation": 1, "test": 1}})  # lowered on purpose
