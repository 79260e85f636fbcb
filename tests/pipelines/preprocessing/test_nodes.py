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


def test_a_smaller_mask_lands_where_its_image_does_when_padded():
    """A 2000 x 1600 film with a 1019 x 800 mask (aspect within ingestion's 2 %): padded
    to a square, the mask must cover the same pixels as a full-size mask would."""
    import cv2
    import numpy as np

    from covid_imaging.imaging.io import decode_gray

    full = np.zeros((1600, 2000), np.uint8)
    full[400:1200, 300:1700] = 255
    small = cv2.resize(full, (1019, 800), interpolation=cv2.INTER_NEAREST)
    manifest = pd.DataFrame({"image_id": ["full", "small"], "image_key": ["a.png", "a.png"],
                             "mask_key": ["full.png", "small.png"], "width": 2000, "height": 1600,
                             "mask_width": [2000, 1019], "mask_height": [1600, 800]})
    raw = {"a.png": lambda: encode_png(np.zeros((1600, 2000), np.uint8)),
           "full.png": lambda: encode_png(full), "small.png": lambda: encode_png(small)}
    results = preprocess_images(manifest, raw, {"resize": {"size": 256, "mode": "pad"}}, {"backend": "serial"})
    reference, from_small = decode_gray(results["masks/full"]()), decode_gray(results["masks/small"]())
    np.testing.assert_array_equal(from_small, reference)  # squared alone, it sat a row off


def test_an_output_root_that_is_not_the_catalog_folder_is_refused(tmp_path):
    from covid_imaging.pipelines.preprocessing.nodes import build_model_input_table

    (tmp_path / "real" / "images").mkdir(parents=True)
    (tmp_path / "real" / "images" / "a.png").write_bytes(encode_png(chest_like_image((32, 32), 1)))
    manifest = pd.DataFrame({"image_id": ["a"], "image_key": ["a.png"], "mask_key": [""], "image_uri": ["a.png"],
                             "mask_uri": [""], "width": [32], "height": [32], "site": ["s"], "is_synthetic": [False]})
    splits = pd.DataFrame({"image_id": ["a"], "split": ["train"]})
    saved = {"images/a": lambda: b""}
    table = build_model_input_table(manifest, splits, saved, {"output_root": str(tmp_path / "real")})
    assert table["image_path"].tolist() == [f"{tmp_path}/real/images/a.png"]
    with pytest.raises(FileNotFoundError, match=r"preprocessing.output_root .*elsewhere' does not hold"):
        build_model_input_table(manifest, splits, saved, {"output_root": str(tmp_path / "elsewhere")})
