"""Preprocessing node: a file that cannot be preprocessed is named."""

from __future__ import annotations

import pandas as pd
import pytest

from covid_imaging.imaging.io import encode_png
from covid_imaging.pipelines.preprocessing.nodes import PreprocessingError, preprocess_images
from tests.conftest import chest_like_image, lung_mask


def test_a_file_that_changed_since_ingestion_is_named():
    manifest = pd.DataFrame({"image_id": ["a", "b"], "image_key": ["cxr/a.png", "cxr/b.png"],
                             "mask_key": ["", "masks/b.png"], "width": [64, 64], "height": [64, 64],
                             "mask_width": [0, 64], "mask_height": [0, 64]})
    raw = {"cxr/a.png": lambda: encode_png(chest_like_image((64, 64), 1)),
           "cxr/b.png": lambda: b"\x89PNG\r\n\x1a\n truncated since",
           "masks/b.png": lambda: encode_png(lung_mask((64, 64)))}
    results = preprocess_images(manifest, raw, {"resize": {"size": 32}}, {"backend": "serial"})
    assert results["images/a"]().startswith(b"\x89PNG")
    assert results["masks/b"]().startswith(b"\x89PNG")
    with pytest.raises(PreprocessingError, match=r"^cxr/b.png: .*data_preparation"):
        results["images/b"]()
