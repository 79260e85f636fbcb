"""Applying a trained lung segmentation model: probability maps, native-size masks, scores.

One code path for every place a model meets images (test evaluation, the disease stress
test, cross-source folds, lung masking): batches of preprocessed PNGs in, one record
per image out, with the probability map at the model's size and, when the original
size is known, the post-processed mask at the image's own resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from covid_imaging.compute import ComputeConfig, ordered_map
from covid_imaging.imaging.io import decode_image, to_gray_uint8
from covid_imaging.imaging.preprocessing import PreprocessingConfig, restore_native_size
from covid_imaging.progress import log_progress
from covid_imaging.segmentation.augmentation import OPACITY_KINDS, paste_opacity
from covid_imaging.segmentation.conventions import (
    UNSPECIFIED,
    head_index,
    model_conventions,
    select_heads,
)
from covid_imaging.segmentation.data import make_segmentation_dataset
from covid_imaging.segmentation.metrics import dice_score, image_metrics, iou_score
from covid_imaging.segmentation.postprocessing import postprocess_probability_map

Loaders = Mapping[str, Callable[[], bytes]]
ImageTransform = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def predict_batches(
    model: keras.Model,
    rows: pd.DataFrame,
    image_size: int,
    batch_size: int,
    transform: ImageTransform | None = None,
) -> Iterator[tuple[Any, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(row, image, mask, probability_map)`` per image, at the model's size.

    ``transform(image, mask, index)`` may change each image before prediction (the
    stress test pastes opacities); the yielded image is the one the model saw. Each
    map is the model's head for the row's ``mask_convention`` (the default head when
    the model has none for it).
    """
    dataset = make_segmentation_dataset(
        rows["image_path"], rows["mask_path"], image_size, batch_size, shuffle=False, augment_params=None, seed=0
    )
    conventions = model_conventions(model)
    row_conventions = rows["mask_convention"] if "mask_convention" in rows else [None] * len(rows)
    heads = [head_index(conventions, name) for name in row_conventions]
    row_iter = iter(rows.itertuples(index=False))
    index = 0
    for batch_images, batch_masks in dataset:
        images = batch_images.numpy()[..., 0]
        masks = batch_masks.numpy()[..., 0]
        if transform is not None:
            images = np.stack([transform(image, mask, index + i) for i, (image, mask) in enumerate(zip(images, masks, strict=True))])
        output = np.asarray(model.predict_on_batch(tf.constant(images[..., None])), dtype=np.float32)
        probabilities = select_heads(output, heads[index:index + len(images)])
        for image, mask, probability_map in zip(images, masks, probabilities, strict=True):
            yield next(row_iter), image, mask, probability_map
            index += 1


def opacity_transform(kind: str, strength: float, seed: int) -> ImageTransform:
    """A stress-test transform: paste the synthetic opacity ``kind`` inside each image's true lung.

    Image ``index`` gets the seed ``(seed, index)``, so every model sees the same opacities.
    """
    if kind not in OPACITY_KINDS:
        raise ValueError(f"stress_test.kinds: unknown opacity {kind!r}; expected some of {OPACITY_KINDS}.")
    kind_index = OPACITY_KINDS.index(kind)

    def paste(image: np.ndarray, mask: np.ndarray, index: int) -> np.ndarray:
        pasted = paste_opacity(image[..., None], mask[..., None], kind_index, strength, tf.constant([seed, index], tf.int64))
        return pasted.numpy()[..., 0]

    return paste


def native_lung_mask(
    probability_map: np.ndarray,
    height: int,
    width: int,
    preprocessing_params: Mapping[str, Any],
    postprocessing_params: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """The probability map at the image's own ``height`` x ``width`` and its post-processed mask."""
    # The same resize settings (and defaults) as the preprocessing that made the input.
    config = PreprocessingConfig.from_params(dict(preprocessing_params))
    native_map = restore_native_size(probability_map, int(height), int(width), config.resize_mode, config.image_size)
    native_map = np.clip(native_map, 0.0, 1.0)
    return native_map, postprocess_probability_map(native_map, postprocessing_params)


def load_native_mask(load: Callable[[], bytes], height: int, width: int) -> np.ndarray:
    """The original mask file (``load()``'s bytes) as a boolean array at the image's size (nearest neighbour)."""
    import cv2  # noqa: PLC0415 - only needed here

    mask = to_gray_uint8(decode_image(load()))
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    # Ingestion accepts masks of 0 and 1 or 0 and full scale only: any non-zero value is
    # inside, as when the training masks are made (imaging.preprocessing.resize_mask).
    return mask > 0


def _score_one(
    item: tuple[dict[str, Any], np.ndarray, np.ndarray, Callable[[], bytes] | None],
    postprocessing_params: Mapping[str, Any],
    preprocessing_params: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], np.ndarray]:
    """One image's metrics (and its post-processed mask) from its probability map."""
    row, mask, probability_map, load_mask = item
    postprocessed = postprocess_probability_map(probability_map, postprocessing_params)
    record = {
        "image_id": row["image_id"],
        "source": row["source"],
        "mask_convention": row["mask_convention"],
        **image_metrics(probability_map, mask, postprocessed),
    }
    if load_mask is not None and preprocessing_params is not None:
        height, width = int(row["height"]), int(row["width"])
        truth = load_native_mask(load_mask, height, width)
        native_map, native_mask = native_lung_mask(
            probability_map, height, width, preprocessing_params, postprocessing_params
        )
        record |= {
            "dice_native_raw": dice_score(native_map > 0.5, truth),
            "dice_native_post": dice_score(native_mask, truth),
            "iou_native_post": iou_score(native_mask, truth),
            # > 1: the mask reaches beyond the annotated lung (e.g. behind the heart,
            # which only V7 masks include); < 1: it misses lung (opacities, borders).
            "area_ratio_native_post": float(np.count_nonzero(native_mask)) / max(1, int(truth.sum())),
        }
    return record, postprocessed


def score_images(
    model: keras.Model,
    rows: pd.DataFrame,
    data_params: Mapping[str, Any],
    postprocessing_params: Mapping[str, Any],
    preprocessing_params: Mapping[str, Any] | None = None,
    raw_files: Loaders | None = None,
    transform: ImageTransform | None = None,
    keep_samples: int = 0,
    compute: Mapping[str, Any] | ComputeConfig | None = None,
) -> tuple[pd.DataFrame, list[tuple[np.ndarray, ...]]]:
    """Per-image metrics of ``model`` on ``rows``: at model size and, with raw files, at native size.

    Returns the table (``image_id``, ``source``, ``mask_convention``, ``dice_raw`` ...
    ``mse``, and ``dice_native_raw``, ``dice_native_post``, ``iou_native_post``,
    ``area_ratio_native_post`` when ``raw_files`` is given) and up to ``keep_samples`` ``(image, mask, probability,
    post-processed)`` tuples for figures. The model predicts in this process; the
    per-image post-processing and scoring run on the ``compute`` backend (all local
    cores by default) while the next batches are predicted, with the same results.
    """
    records, samples = [], []
    native = raw_files is not None and preprocessing_params is not None
    # The model's own input size: one fact, whatever the parameters say (an ensemble has none).
    image_size = int(model.input_shape[1])
    kept: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # sample figures: one per patient
    sampled_groups: set[str] = set()

    def predicted():
        batches = predict_batches(model, rows, image_size, int(data_params["batch_size"]), transform)
        for index, (row, image, mask, probability_map) in enumerate(
            log_progress(batches, len(rows), f"scoring {model.name}")
        ):
            fields = {
                "image_id": row.image_id, "source": row.source,
                "mask_convention": getattr(row, "mask_convention", UNSPECIFIED),
                "height": getattr(row, "height", 0), "width": getattr(row, "width", 0),
            }
            group = str(getattr(row, "group_id", row.image_id))
            if len(sampled_groups) < keep_samples and group not in sampled_groups:
                sampled_groups.add(group)
                kept[index] = (image, mask, probability_map)
            yield fields, mask, probability_map, raw_files[row.mask_key] if native else None

    score = partial(_score_one, postprocessing_params=postprocessing_params,
                    preprocessing_params=preprocessing_params if native else None)
    for index, (record, postprocessed) in enumerate(ordered_map(score, predicted(), compute)):
        records.append(record)
        if index in kept:
            image, mask, probability_map = kept.pop(index)
            samples.append((image, mask, probability_map, postprocessed, float(record["dice_post"]), str(record["image_id"])))
    return pd.DataFrame(records), samples
