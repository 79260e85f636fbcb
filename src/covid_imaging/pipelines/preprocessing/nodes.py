"""Preprocessing nodes that stream: each output image is produced when it is saved.

``preprocess_images`` returns a mapping of output keys to callables. Kedro's
``PartitionedDataset`` calls them one at a time while saving (lazy saving), so memory
is bounded by one image, not by the data set (33,920 images in the reference set).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pandas as pd

from covid_imaging.imaging.io import decode_gray, decode_image, encode_png, to_gray_uint8
from covid_imaging.imaging.preprocessing import PreprocessingConfig, preprocess_gray, resize_mask

RawFiles = dict[str, Callable[[], bytes]]


def _preprocess_image_file(load: Callable[[], bytes], config: PreprocessingConfig) -> bytes:
    return encode_png(preprocess_gray(decode_gray(load()), config))


def _preprocess_mask_file(load: Callable[[], bytes], config: PreprocessingConfig) -> bytes:
    return encode_png(resize_mask(to_gray_uint8(decode_image(load())), config.image_size, config.resize_mode))


def preprocess_images(manifest: pd.DataFrame, raw_files: RawFiles, params: dict[str, Any]) -> dict[str, Callable[[], bytes]]:
    """Lazily preprocess every manifest image (and its mask, resized with nearest-neighbour).

    Output keys: ``images/<image_id>`` and ``masks/<image_id>`` (saved as PNG).
    """
    config = PreprocessingConfig.from_params(params)
    outputs: dict[str, Callable[[], bytes]] = {}
    for row in manifest.itertuples(index=False):
        outputs[f"images/{row.image_id}"] = partial(_preprocess_image_file, raw_files[row.image_key], config)
        if row.mask_key:
            outputs[f"masks/{row.image_id}"] = partial(_preprocess_mask_file, raw_files[row.mask_key], config)
    return outputs


def build_model_input_table(
    manifest: pd.DataFrame,
    split_table: pd.DataFrame,
    preprocessed_images: dict[str, Callable[[], bytes]],
    params: dict[str, Any],
) -> pd.DataFrame:
    """Join manifest and splits with the paths of the preprocessed PNGs the models read."""
    root = params["output_root"].rstrip("/")
    table = split_table.merge(
        manifest[["image_id", "image_key", "mask_key", "image_uri", "mask_uri", "width", "height", "is_synthetic"]], on="image_id", how="left"
    )
    available = set(preprocessed_images)
    table["image_path"] = [f"{root}/images/{image_id}.png" for image_id in table["image_id"]]
    table["mask_path"] = [
        f"{root}/masks/{image_id}.png" if f"masks/{image_id}" in available else "" for image_id in table["image_id"]
    ]
    missing = [image_id for image_id in table["image_id"] if f"images/{image_id}" not in available]
    if missing:
        raise FileNotFoundError(f"{len(missing)} preprocessed images missing under {root}, e.g. {missing[:3]}")
    return table
