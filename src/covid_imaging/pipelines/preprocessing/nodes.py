"""Preprocessing nodes that stream: each output image is produced when it is saved.

``preprocess_images`` returns a mapping of output keys to callables. Kedro's
``PartitionedDataset`` calls them one at a time while saving (lazy saving); the images
are computed ahead of it on the ``compute`` backend (all local cores by default, or a
Dask cluster), in bounded chunks (:class:`covid_imaging.compute.LazyResults`), so
memory is bounded by the chunks in flight, not by the data set (33,920 images in the
reference set).

Every image is decoded with the pixel budget of :func:`decode_image`, raised to the size
ingestion accepted for it (the manifest's width x height): an image accepted with a
larger ``ingestion.max_pixels`` is preprocessed instead of failing the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any

import cv2
import numpy as np
import pandas as pd

from covid_imaging.compute import ComputeConfig, LazyResults
from covid_imaging.imaging.io import (
    DEFAULT_MAX_PIXELS,
    decode_image,
    encode_png,
    pixel_budget,
    to_gray_uint8,
)
from covid_imaging.imaging.preprocessing import PreprocessingConfig, preprocess_gray, resize_mask

RawFiles = dict[str, Callable[[], bytes]]


class PreprocessingError(ValueError):
    """A file that ingestion accepted cannot be preprocessed (e.g. it changed since)."""


def _named(key: str, work: Callable[[], bytes]) -> bytes:
    try:
        return work()
    except Exception as error:  # the file named, whatever the decoder raised
        raise PreprocessingError(
            f"{key}: {error} (the file changed since ingestion? run `kedro run --pipelines=data_preparation` again)"
        ) from error


def _preprocess_image_file(load: Callable[[], bytes], config: PreprocessingConfig,
                           max_pixels: int = DEFAULT_MAX_PIXELS, key: str = "image") -> bytes:
    return _named(key, lambda: encode_png(preprocess_gray(to_gray_uint8(decode_image(load(), max_pixels)), config)))


def _mask_on_image_grid(mask: np.ndarray, image_size: tuple[int, int] | None) -> np.ndarray:
    """A mask of another size than its image (same aspect, within ingestion's tolerance)
    first brought to the image's pixel grid, so that padding to a square puts both in the
    same place (each squared on its own, they could be a few pixels apart)."""
    if image_size is None or mask.shape == image_size:
        return mask
    height, width = image_size
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def _preprocess_mask_file(load: Callable[[], bytes], config: PreprocessingConfig,
                          max_pixels: int = DEFAULT_MAX_PIXELS, key: str = "mask",
                          image_size: tuple[int, int] | None = None) -> bytes:
    return _named(key, lambda: encode_png(resize_mask(
        _mask_on_image_grid(to_gray_uint8(decode_image(load(), max_pixels)), image_size),
        config.image_size, config.resize_mode)))


def _image_size(row: Any) -> tuple[int, int] | None:
    """``(height, width)`` of a manifest row's image, or None where the row has none."""
    try:
        return int(row.height), int(row.width)
    except (AttributeError, TypeError, ValueError):
        return None


def _call(task: Callable[[], bytes]) -> bytes:
    return task()


def preprocess_images(
    manifest: pd.DataFrame, raw_files: RawFiles, params: dict[str, Any], compute: dict[str, Any] | None = None
) -> LazyResults:
    """Lazily preprocess every manifest image (and its mask, resized with nearest-neighbour).

    Output keys: ``images/<image_id>`` and ``masks/<image_id>`` (saved as PNG), computed
    on the ``compute`` backend; the PNGs are the same whatever the backend.
    """
    config = PreprocessingConfig.from_params(params)
    tasks: dict[str, Callable[[], bytes]] = {}
    for row in manifest.itertuples(index=False):
        budget = pixel_budget(getattr(row, "width", None), getattr(row, "height", None))
        tasks[f"images/{row.image_id}"] = partial(_preprocess_image_file, raw_files[row.image_key], config, budget,
                                                  row.image_key)
        if row.mask_key:  # a mask may be larger than its image (same aspect): its own size
            mask_budget = pixel_budget(getattr(row, "mask_width", None), getattr(row, "mask_height", None))
            tasks[f"masks/{row.image_id}"] = partial(_preprocess_mask_file, raw_files[row.mask_key], config,
                                                     mask_budget, row.mask_key, _image_size(row))
    return LazyResults(_call, tasks, ComputeConfig.from_params(compute), what="preprocessing (images and masks)")


def build_model_input_table(
    manifest: pd.DataFrame,
    split_table: pd.DataFrame,
    preprocessed_images: dict[str, Callable[[], bytes]],
    params: dict[str, Any],
) -> pd.DataFrame:
    """Join manifest (files, size, acquisition site) and splits with the paths of the preprocessed PNGs the models read."""
    root = params["output_root"].rstrip("/")
    table = split_table.merge(
        manifest[["image_id", "image_key", "mask_key", "image_uri", "mask_uri", "width", "height", "site", "is_synthetic"]], on="image_id", how="left"
    )
    available = set(preprocessed_images)
    table["image_path"] = [f"{root}/images/{image_id}.png" for image_id in table["image_id"]]
    table["mask_path"] = [
        f"{root}/masks/{image_id}.png" if f"masks/{image_id}" in available else "" for image_id in table["image_id"]
    ]
    missing = [image_id for image_id in table["image_id"] if f"images/{image_id}" not in available]
    if missing:
        raise FileNotFoundError(f"{len(missing)} preprocessed images missing under {root}, e.g. {missing[:3]}")
    # output_root repeats the catalog's preprocessed_images path: a local root must hold them
    if "://" not in root and len(table) and not os.path.exists(table["image_path"].iloc[0]):
        raise FileNotFoundError(
            f"preprocessing.output_root {root!r} does not hold the preprocessed images "
            f"({table['image_path'].iloc[0]} is missing): set it to the catalog's preprocessed_images path"
        )
    return table
