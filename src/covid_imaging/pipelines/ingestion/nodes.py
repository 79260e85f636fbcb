"""Ingestion nodes: list, decode and validate raw images into a manifest.

Bad files never stop the run unless ``strict: true``: each one becomes a row of the
rejected-files report with the file and the reason.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from covid_imaging.imaging.io import ImageDecodeError, decode_image, to_gray_uint8
from covid_imaging.pipelines.ingestion.groups import assign_group_ids
from covid_imaging.pipelines.ingestion.layouts import (
    is_image_key,
    read_class_folder_layout,
    read_manifest_csv_layout,
    read_paired_folder_layout,
    read_radiography_db_layout,
)

logger = logging.getLogger(__name__)

RawFiles = dict[str, Callable[[], bytes]]

MANIFEST_COLUMNS = [
    "image_id",
    "image_key",
    "image_uri",
    "mask_key",
    "mask_uri",
    "label",
    "task",
    "source",
    "group_id",
    "width",
    "height",
    "channels",
    "bit_depth",
    "file_format",
    "content_hash",
    "mask_width",
    "mask_height",
    "is_synthetic",
]
REJECTED_COLUMNS = ["file", "reason", "image_key", "mask_key"]


class IngestionError(ValueError):
    """A problem that stops ingestion (empty source, or any bad file with strict: true)."""


@dataclass
class _Checked:
    """The outcome of validating one candidate image (and its mask)."""

    row: dict[str, Any]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file key, reason)


def _uri(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{key}" if key else ""


def _load(raw_files: RawFiles, key: str) -> bytes:
    if key not in raw_files:
        raise FileNotFoundError("file listed but not found in the raw data")
    return raw_files[key]()


def _mask_problem(mask_pixels: np.ndarray, image_width: int, image_height: int, aspect_tolerance: float) -> str | None:
    """Why a mask is unusable, or None. Same-aspect size differences are fine (resized later)."""
    gray = to_gray_uint8(mask_pixels) if mask_pixels.ndim == 3 else mask_pixels
    values = np.unique(gray)
    full_scale = np.iinfo(gray.dtype).max
    if not set(values.tolist()) <= {0, 1, full_scale} or (1 in values and full_scale in values):
        return f"non-binary mask: {len(values)} distinct values (expected 0 and 1, or 0 and {full_scale})"
    mask_height, mask_width = gray.shape[:2]
    if (mask_width, mask_height) != (image_width, image_height):
        image_aspect = image_width / image_height
        mask_aspect = mask_width / mask_height
        if abs(image_aspect - mask_aspect) / image_aspect > aspect_tolerance:
            return (
                f"mask size {mask_width}x{mask_height} does not match image size "
                f"{image_width}x{image_height} (aspect ratio differs)"
            )
    return None


def _check_candidate(candidate: dict[str, Any], raw_files: RawFiles, params: dict[str, Any]) -> _Checked:
    image_key, mask_key = candidate["image_key"], candidate["mask_key"]
    root = params["raw_location"]
    row = {
        **candidate,
        "image_id": str(PurePosixPath(image_key).with_suffix("")),
        "image_uri": _uri(root, image_key),
        "mask_uri": _uri(root, mask_key),
    }
    checked = _Checked(row=row)
    try:
        data = _load(raw_files, image_key)
        decoded = decode_image(data)
    except (ImageDecodeError, FileNotFoundError) as error:
        checked.problems.append((image_key, str(error)))
        return checked
    row.update(
        width=decoded.width,
        height=decoded.height,
        channels=decoded.channels,
        bit_depth=decoded.bit_depth,
        file_format=decoded.file_format,
        content_hash=hashlib.sha256(data).hexdigest(),
        mask_width=0,
        mask_height=0,
    )
    if not mask_key:
        if candidate["task"] in params.get("tasks_requiring_masks", ["segmentation"]):
            checked.problems.append((image_key, "missing mask: no mask file matches this image"))
        return checked
    try:
        mask = decode_image(_load(raw_files, mask_key))
    except (ImageDecodeError, FileNotFoundError) as error:
        checked.problems.append((mask_key, f"mask: {error}"))
        return checked
    problem = _mask_problem(mask.pixels, decoded.width, decoded.height, params.get("mask_aspect_tolerance", 0.02))
    if problem:
        checked.problems.append((mask_key, problem))
    row.update(mask_width=mask.width, mask_height=mask.height)
    return checked


def list_candidates(raw_files: RawFiles, params: dict[str, Any]) -> pd.DataFrame:
    """Apply the configured layout reader to the raw file listing."""
    layout = params["layout"]
    task = params.get("task", "segmentation")
    source = params.get("source", "unknown")
    keys = list(raw_files)
    if layout == "radiography_db":
        return read_radiography_db_layout(keys, task, source)
    if layout == "class_folders":
        return read_class_folder_layout(keys, task, source)
    if layout == "paired_folders":
        return read_paired_folder_layout(keys, task, source, params.get("label", "unlabelled"))
    if layout == "manifest_csv":
        return read_manifest_csv_layout(keys, lambda key: _load(raw_files, key), params["manifest_file"], task, source)
    if layout == "multi":
        # Several layouts under sub-folders of one root, e.g. the demo set's cxr/ and ct/.
        frames = []
        for sub in params["parts"]:
            prefix = sub["prefix"].rstrip("/") + "/"
            sub_files = {key[len(prefix) :]: loader for key, loader in raw_files.items() if key.startswith(prefix)}
            part = list_candidates(sub_files, {**params, **sub})
            for column in ("image_key", "mask_key"):
                part[column] = part[column].map(lambda key, p=prefix: p + key if key else "")
            frames.append(part)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    raise IngestionError(
        f"ingestion.layout must be one of radiography_db, class_folders, paired_folders, manifest_csv, multi; got {layout!r}"
    )


def _patient_ids(raw_files: RawFiles, params: dict[str, Any]) -> dict[str, str]:
    """Image key → patient id from an optional metadata CSV among the raw files."""
    metadata = params.get("patient_metadata") or {}
    metadata_file = metadata.get("file")
    if not metadata_file or metadata_file not in raw_files:
        return {}
    table = pd.read_csv(io.BytesIO(raw_files[metadata_file]()), dtype=str, keep_default_na=False)
    return dict(zip(table[metadata["path_column"]], table[metadata["patient_column"]], strict=True))


def build_manifest(raw_files: RawFiles, params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode and validate every candidate; return (manifest, rejected-files report).

    Rejected: corrupt/truncated/empty/non-image files, missing masks (for tasks that
    need them), masks of another aspect ratio, non-binary masks, exact duplicates (same
    SHA-256 as an image listed earlier). ``strict: true`` raises on the first one.
    """
    root = params["raw_location"]
    if not any(is_image_key(key) for key in raw_files):
        raise IngestionError(
            f"No images found in '{root}' (layout '{params['layout']}'): the folder or container prefix is "
            "empty or does not exist. Generate the demo set with `kedro run --pipeline=demo_data`, or point "
            "the `raw_images` catalog entry at your data (see README, 'Where data goes')."
        )
    candidates = list_candidates(raw_files, params)
    if candidates.empty:
        raise IngestionError(
            f"No images in '{root}' match layout '{params['layout']}'. Check ingestion.layout in "
            "conf/<env>/parameters/ingestion.yml against the folder structure."
        )
    candidates["group_id"] = assign_group_ids(candidates, _patient_ids(raw_files, params))
    strict = bool(params.get("strict", False))
    with ThreadPoolExecutor(max_workers=int(params.get("n_workers", 4))) as pool:
        checked_rows = pool.map(
            lambda candidate: _check_candidate(candidate, raw_files, params), candidates.to_dict("records")
        )
        accepted, rejected, first_key_by_hash = [], [], {}
        for checked in checked_rows:
            row = checked.row
            if not checked.problems and row["content_hash"] in first_key_by_hash:
                checked.problems.append(
                    (row["image_key"], f"exact duplicate (same SHA-256) of {first_key_by_hash[row['content_hash']]}")
                )
            for file_key, reason in checked.problems:
                if strict:
                    raise IngestionError(f"{_uri(root, file_key)}: {reason}")
                rejected.append(
                    {"file": _uri(root, file_key), "reason": reason, "image_key": row["image_key"], "mask_key": row["mask_key"]}
                )
            if not checked.problems:
                first_key_by_hash[row["content_hash"]] = row["image_key"]
                accepted.append(row)
    manifest = pd.DataFrame(accepted, columns=MANIFEST_COLUMNS[:-1])
    manifest["is_synthetic"] = manifest["source"].str.startswith("synthetic") | manifest["image_key"].map(
        lambda key: PurePosixPath(key).name.startswith("synthetic_")
    )
    rejected_report = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
    if manifest.empty:
        raise IngestionError(f"All {len(candidates)} candidate images in '{root}' were rejected; first: {rejected[:3]}")
    logger.info("Manifest: %d images accepted, %d files rejected (see rejected_files report)", len(manifest), len(rejected_report))
    return manifest.astype({"width": int, "height": int, "channels": int, "bit_depth": int}), rejected_report
