"""Lung-mask based image edits for classification and the shortcut audit.

Images are 2-D ``(H, W)`` or ``(H, W, C)`` arrays (any dtype, preserved); masks are
2-D and binarised with ``> 0``. A mask of another size is resized (nearest) to the
image first, so masks predicted at 256 px work on full-resolution images.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from covid_imaging.segmentation.postprocessing import postprocess_probability_map


def binarise_mask(mask: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean ``(H, W)`` mask, resized (nearest neighbour) to ``shape`` when given."""
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {array.shape}")
    binary = (array > 0).astype(np.uint8)
    if shape is not None and binary.shape != tuple(shape):
        binary = cv2.resize(binary, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return binary.astype(bool)


def _multiply(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    weights = keep[..., None] if image.ndim == 3 else keep
    return (image * weights).astype(image.dtype)


def lung_bounding_box(
    mask: np.ndarray, margin_px: int = 0, shape: tuple[int, int] | None = None
) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` (exclusive ends) of the mask, grown by ``margin_px``.

    Raises ``ValueError`` for an empty mask.
    """
    binary = binarise_mask(mask, shape)
    rows = np.flatnonzero(binary.any(axis=1))
    cols = np.flatnonzero(binary.any(axis=0))
    if rows.size == 0:
        raise ValueError("lung mask is empty: no bounding box")
    height, width = binary.shape
    return (
        max(int(rows[0]) - margin_px, 0),
        min(int(rows[-1]) + 1 + margin_px, height),
        max(int(cols[0]) - margin_px, 0),
        min(int(cols[-1]) + 1 + margin_px, width),
    )


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    # INTER_AREA avoids aliasing when shrinking; linear is smoother when enlarging.
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    if image.ndim == 3 and resized.ndim == 2:  # cv2 drops a single channel axis
        resized = resized[..., None]
    return resized.astype(image.dtype)


def apply_lung_mask(
    image: np.ndarray,
    mask: np.ndarray,
    crop_to_bbox: bool = True,
    margin_px: int = 10,
    output_size: int | None = None,
) -> np.ndarray:
    """Zero everything outside the lungs, optionally crop to the lungs and resize.

    With ``crop_to_bbox`` the masked image is cropped to the mask's bounding box
    grown by ``margin_px``; the result is then resized to ``output_size`` (square) or,
    when None, back to the input image's size.
    """
    array = np.asarray(image)
    binary = binarise_mask(mask, array.shape[:2])
    masked = _multiply(array, binary)
    if crop_to_bbox:
        top, bottom, left, right = lung_bounding_box(binary, margin_px)
        masked = masked[top:bottom, left:right]
    height, width = (output_size, output_size) if output_size else array.shape[:2]
    if masked.shape[:2] == (height, width):
        return masked
    return _resize(masked, height, width)


def black_out_lungs(image: np.ndarray, mask: np.ndarray, dilation_px: int = 0) -> np.ndarray:
    """Keep only what lies OUTSIDE the lungs (for the shortcut audit).

    ``dilation_px`` grows the mask first so lung borders do not leak through.
    """
    array = np.asarray(image)
    binary = binarise_mask(mask, array.shape[:2])
    if dilation_px > 0:
        kernel = cv2.getStructuringElement(
            cv2.MORPH_ELLIPSE, (2 * dilation_px + 1, 2 * dilation_px + 1)
        )
        binary = cv2.dilate(binary.astype(np.uint8), kernel).astype(bool)
    return _multiply(array, ~binary)


def lung_area_fraction(mask: np.ndarray) -> float:
    """Share of the image covered by the mask (0..1)."""
    return float(binarise_mask(mask).mean())


def lung_mask_at(shape: tuple[int, int], probability_map: np.ndarray, postprocessing: Mapping[str, Any] | None) -> np.ndarray:
    """The classifiers' lung mask: the segmentation model's ``probability_map`` resized
    (bilinear) to ``shape`` (height, width), then post-processed (``lung_masking.postprocessing``)."""
    full = cv2.resize(probability_map.astype(np.float32), shape[::-1], interpolation=cv2.INTER_LINEAR)
    return postprocess_probability_map(np.clip(full, 0, 1), postprocessing)
