"""Segmentation nodes."""

from __future__ import annotations

import pandas as pd

from covid_imaging.pipelines.segmentation.nodes import _split_rows


def test_an_image_cap_keeps_every_source_in_proportion():
    """max_train_images on a table sorted by source must not train on one source only
    (the other source's mask convention would get no head)."""
    table = pd.DataFrame({"split": "train", "source": ["ieee8023_v7"] * 30 + ["shenzhen"] * 10})
    capped = _split_rows(table, "train", 8)
    assert capped["source"].value_counts().to_dict() == {"ieee8023_v7": 6, "shenzhen": 2}
    assert len(_split_rows(table, "train", 100)) == 40
