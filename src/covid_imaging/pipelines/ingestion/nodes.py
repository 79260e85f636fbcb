"""Ingestion nodes: list, decode and validate raw images into a manifest.

Bad files never stop the run unless ``strict: true``: each one becomes a row of the
rejected-files report with the file, the reason and a ``severity``:

* ``error``: the file is not used (corrupt, over the pixel budget, unreadable link, ...);
* ``warning``: suspicious but legal (empty or full mask, extreme aspect ratio, a mask
  without an image, labels that differ only in punctuation); the image is still used.
  ``warnings_as_errors`` turns chosen warning kinds into errors.

``strict: true`` stops at the first error, before decoding the files after it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from covid_imaging.compute import ComputeConfig, ordered_map
from covid_imaging.datasets.bytes_dataset import UnreadableFileError
from covid_imaging.imaging.io import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    PixelBudgetError,
    check_pixel_budget,
    decode_image,
    read_header,
    to_gray_uint8,
)
from covid_imaging.pipelines.ingestion.groups import assign_group_ids
from covid_imaging.pipelines.ingestion.layouts import (
    Listing,
    ListingProblem,
    is_image_key,
    read_class_folder_layout,
    read_folder_layout,
    read_manifest_csv_layout,
    read_paired_folder_layout,
    read_radiography_db_layout,
)
from covid_imaging.progress import log_progress
from covid_imaging.registry import TASK_MODALITY
from covid_imaging.segmentation._params import merge_params

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
    "site",
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
REJECTED_COLUMNS = ["file", "reason", "severity", "image_key", "mask_key"]

# Suspicious-but-legal findings; ``warnings_as_errors`` may name any of them.
WARNING_KINDS = ("empty_mask", "full_mask", "extreme_aspect", "orphan_mask", "near_duplicate_label")
LAYOUT_NAMES = ("radiography_db", "class_folders", "paired_folders", "manifest_csv", "multi", "folder")

DEFAULT_INGESTION_PARAMS: dict[str, Any] = {
    "raw_location": "",
    "layout": "multi",
    "parts": [],
    "manifest_file": "manifest.csv",
    # site_column: the metadata column naming where an image was acquired (hospital, city);
    # the manifest's ``site`` (cross-site evaluation), the image's source where unknown.
    "patient_metadata": {"file": "", "path_column": "path", "patient_column": "patientid", "site_column": None},
    "tasks_requiring_masks": ["segmentation"],
    "mask_aspect_tolerance": 0.02,
    "strict": False,
    "n_workers": 4,
    "task": None,  # None: inferred from the layout (LAYOUT_TASKS)
    "source": "unknown",
    "label": "unlabelled",
    "max_pixels": DEFAULT_MAX_PIXELS,
    "max_aspect_ratio": 5.0,
    "warnings_as_errors": [],
}
# The manifest task of a layout's images when ``ingestion.task`` is not given: image/mask
# pairs train segmentation, class folders train classifiers, the COVID-19 Radiography
# Database layout has both (``cxr``, as the demo set); a manifest's ``task`` column wins.
LAYOUT_TASKS = {"radiography_db": "cxr", "paired_folders": "segmentation", "class_folders": "classification",
                "manifest_csv": "cxr", "multi": "cxr"}
PART_KEYS = frozenset({"prefix", "layout", "task", "source", "label", "manifest_file", "parts"})


class IngestionError(ValueError):
    """A problem that stops ingestion (empty source, or any bad file with strict: true)."""


# ----------------------------------------------------------------------------- parameters


def resolve_ingestion_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``params`` over the defaults; unknown keys and impossible values raise."""
    try:
        resolved = merge_params(DEFAULT_INGESTION_PARAMS, params, where="ingestion")
    except ValueError as error:
        raise IngestionError(str(error)) from None
    _validate_parts(resolved["parts"], "ingestion.parts")
    if resolved["layout"] not in LAYOUT_NAMES:
        raise IngestionError(f"ingestion.layout must be one of {', '.join(LAYOUT_NAMES)}; got {resolved['layout']!r}")
    if resolved["task"] is not None and resolved["task"] not in TASK_MODALITY:
        raise IngestionError(f"ingestion.task must be one of {sorted(TASK_MODALITY)} (or left out); got {resolved['task']!r}")
    for key in ("max_pixels", "n_workers"):
        if not isinstance(resolved[key], int | float) or resolved[key] < 1:
            raise IngestionError(f"ingestion.{key} must be a positive number; got {resolved[key]!r}")
    if not resolved["max_aspect_ratio"] or float(resolved["max_aspect_ratio"]) < 1:
        raise IngestionError(f"ingestion.max_aspect_ratio must be at least 1; got {resolved['max_aspect_ratio']!r}")
    as_errors = resolved["warnings_as_errors"]
    if as_errors is True:
        resolved["warnings_as_errors"] = list(WARNING_KINDS)
    elif as_errors is False or as_errors is None:
        resolved["warnings_as_errors"] = []
    else:
        unknown = sorted(set(as_errors) - set(WARNING_KINDS))
        if unknown:
            raise IngestionError(
                f"ingestion.warnings_as_errors: unknown kind(s) {unknown}; expected true, false or a list of "
                f"{list(WARNING_KINDS)}"
            )
    return resolved


def _validate_parts(parts: list[Any], where: str) -> None:
    for index, part in enumerate(parts or []):
        if not isinstance(part, Mapping) or "prefix" not in part or "layout" not in part:
            raise IngestionError(f"{where}[{index}] must be a mapping with at least 'prefix' and 'layout'")
        unknown = sorted(set(part) - PART_KEYS)
        if unknown:
            raise IngestionError(f"Unknown {where}[{index}] parameter(s) {unknown}; expected some of {sorted(PART_KEYS)}")
        _validate_parts(part.get("parts", []), f"{where}[{index}].parts")


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One finding about one file; ``kind`` is an error name or one of WARNING_KINDS."""

    file: str
    reason: str
    kind: str = "error"

    def severity(self, as_errors: list[str]) -> str:
        return "warning" if self.kind in WARNING_KINDS and self.kind not in as_errors else "error"


@dataclass
class _Checked:
    """The outcome of validating one candidate image (and its mask)."""

    row: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)


def display_key(key: str) -> str:
    """A printable, UTF-8-encodable form of a key (non-UTF-8 bytes become ``\\xNN``)."""
    return os.fsencode(key).decode("utf-8", "backslashreplace") if _is_undecodable(key) else key


def _is_undecodable(key: str) -> bool:
    # Python maps bytes that are not UTF-8 in file names to lone surrogates.
    return any("\udc80" <= character <= "\udcff" for character in key)


def _uri(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{display_key(key)}" if key else ""


# ----------------------------------------------------------------------------- decoding


class _PixelGate:
    """Lets threads decode only while the declared pixels in flight stay within a budget.

    One image over the budget alone never waits (it is rejected before decoding
    anyway), so memory is bounded by about one budget's worth of pixels whatever the
    number of workers.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity, self._used = int(capacity), 0
        self._condition = threading.Condition()

    def acquire(self, pixels: int) -> int:
        pixels = min(int(pixels), self._capacity)
        with self._condition:
            while self._used and self._used + pixels > self._capacity:
                self._condition.wait()
            self._used += pixels
        return pixels

    def release(self, pixels: int) -> None:
        with self._condition:
            self._used -= pixels
            self._condition.notify_all()


def _load(raw_files: RawFiles, key: str) -> bytes:
    if key not in raw_files:
        raise FileNotFoundError("file listed but not found in the raw data")
    return raw_files[key]()


def _read_and_decode(raw_files: RawFiles, key: str, params: dict[str, Any], gate: _PixelGate):
    """``(bytes, DecodedImage)``; every failure is an ImageDecodeError/OSError-like with a reason."""
    data = _load(raw_files, key)
    header = read_header(data)
    check_pixel_budget(header, params["max_pixels"])
    weight = gate.acquire(header.pixels)
    try:
        return data, decode_image(data, max_pixels=params["max_pixels"])
    finally:
        gate.release(weight)


def _failure_reason(error: BaseException) -> str:
    if isinstance(error, UnreadableFileError):
        return error.reason
    if isinstance(error, PixelBudgetError):
        return f"{error} (raise ingestion.max_pixels to accept it)"
    if isinstance(error, ImageDecodeError | FileNotFoundError):
        return str(error)
    if isinstance(error, MemoryError):
        return "out of memory while decoding (lower ingestion.n_workers or ingestion.max_pixels)"
    # Anything else is a decoder bug on hostile bytes: report it, never stop the run.
    return f"cannot be decoded ({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''})"


def _mask_problems(mask_pixels: np.ndarray, image_width: int, image_height: int, mask_key: str,
                   aspect_tolerance: float) -> list[Problem]:
    """Why a mask is unusable or suspicious. Same-aspect size differences are fine (resized later)."""
    gray = to_gray_uint8(mask_pixels) if mask_pixels.ndim == 3 else mask_pixels
    values = np.unique(gray)
    full_scale = np.iinfo(gray.dtype).max
    if not set(values.tolist()) <= {0, 1, full_scale} or (1 in values and full_scale in values):
        return [Problem(mask_key, f"non-binary mask: {len(values)} distinct values (expected 0 and 1, or 0 and {full_scale})")]
    mask_height, mask_width = gray.shape[:2]
    if (mask_width, mask_height) != (image_width, image_height):
        image_aspect = image_width / image_height
        mask_aspect = mask_width / mask_height
        if abs(image_aspect - mask_aspect) / image_aspect > aspect_tolerance:
            return [Problem(
                mask_key,
                f"mask size {mask_width}x{mask_height} does not match image size "
                f"{image_width}x{image_height} (aspect ratio differs)",
            )]
    if values.tolist() == [0]:
        return [Problem(mask_key, "empty mask: no foreground pixel (all 0)", "empty_mask")]
    if 0 not in values:
        return [Problem(mask_key, f"full mask: every pixel is foreground (all {int(values[0])})", "full_mask")]
    return []


def _aspect_problem(image_key: str, width: int, height: int, max_ratio: float) -> Problem | None:
    ratio = max(width, height) / min(width, height)
    if ratio <= max_ratio:
        return None
    return Problem(
        image_key,
        f"extreme aspect ratio {width}x{height} ({ratio:.1f}:1, over ingestion.max_aspect_ratio {max_ratio:g}); "
        "resizing to a square will distort it",
        "extreme_aspect",
    )


def _check_candidate(candidate: dict[str, Any], raw_files: RawFiles, params: dict[str, Any],
                     gate: _PixelGate) -> _Checked:
    image_key, mask_key = candidate["image_key"], candidate["mask_key"]
    root = params["raw_location"]
    row = {**candidate, "image_uri": _uri(root, image_key), "mask_uri": _uri(root, mask_key)}
    checked = _Checked(row=row)
    try:
        data, decoded = _read_and_decode(raw_files, image_key, params, gate)
    except Exception as error:  # every per-file failure becomes a report row (see _failure_reason)
        checked.problems.append(Problem(image_key, _failure_reason(error)))
        return checked
    width, height = decoded.width, decoded.height
    row.update(
        width=width,
        height=height,
        channels=decoded.channels,
        bit_depth=decoded.bit_depth,
        file_format=decoded.file_format,
        content_hash=hashlib.sha256(data).hexdigest(),
        mask_width=0,
        mask_height=0,
    )
    del data, decoded  # free the pixels before the mask is decoded
    aspect = _aspect_problem(image_key, width, height, float(params["max_aspect_ratio"]))
    if aspect:
        checked.problems.append(aspect)
    if not mask_key:
        if candidate["task"] in params["tasks_requiring_masks"]:
            checked.problems.append(Problem(image_key, "missing mask: no mask file matches this image"))
        return checked
    try:
        _, mask = _read_and_decode(raw_files, mask_key, params, gate)
    except Exception as error:  # as above, for the mask
        checked.problems.append(Problem(mask_key, f"mask: {_failure_reason(error)}"))
        return checked
    checked.problems.extend(_mask_problems(mask.pixels, width, height, mask_key, float(params["mask_aspect_tolerance"])))
    row.update(mask_width=mask.width, mask_height=mask.height)
    return checked


_gates: dict[int, _PixelGate] = {}
_gates_lock = threading.Lock()


def _process_gate(capacity: int) -> _PixelGate:
    """One pixel gate per process and budget: threads of a process share it (processes and
    Dask workers each have their own, so each bounds its own memory)."""
    with _gates_lock:
        return _gates.setdefault(int(capacity), _PixelGate(capacity))


def _check_task(task: tuple[dict[str, Any], RawFiles], params: dict[str, Any]) -> _Checked:
    candidate, loaders = task
    return _check_candidate(candidate, loaders, params, _process_gate(int(params["max_pixels"])))


def _checked_in_order(candidates: list[dict[str, Any]], raw_files: RawFiles, params: dict[str, Any],
                      compute: ComputeConfig | None = None) -> Iterator[_Checked]:
    """Check candidates on the ``compute`` backend, yielding results in candidate order.

    At most ``n_workers`` files are in flight, so a consumer that stops (strict mode)
    leaves the rest undecoded, and results never pile up in memory. Each task carries
    only its own image's and mask's loaders (not the whole listing).
    """
    n_in_flight = max(1, int(params["n_workers"]))
    config = replace(compute or ComputeConfig(n_workers=n_in_flight), chunk_size=1, in_flight=n_in_flight)
    tasks = (
        (candidate, {key: raw_files[key] for key in (candidate["image_key"], candidate["mask_key"]) if key in raw_files})
        for candidate in candidates
    )
    yield from log_progress(ordered_map(partial(_check_task, params=params), tasks, config), len(candidates),
                            "checking files")


# ----------------------------------------------------------------------------- listing


def _listing(raw_files: RawFiles, params: dict[str, Any]) -> Listing:
    """Apply the configured layout reader to the raw file listing."""
    layout, source = params["layout"], params["source"]
    task = params["task"] or LAYOUT_TASKS.get(layout, "cxr")
    keys = list(raw_files)
    if layout == "radiography_db":
        return read_radiography_db_layout(keys, task, source)
    if layout == "class_folders":
        return read_class_folder_layout(keys, task, source)
    if layout == "paired_folders":
        return read_paired_folder_layout(keys, task, source, params["label"])
    if layout == "folder":
        return read_folder_layout(keys, task, source, params["label"])
    if layout == "manifest_csv":
        try:
            return read_manifest_csv_layout(
                keys, lambda key: _load(raw_files, key), params["manifest_file"], task, source, params["raw_location"]
            )
        except UnreadableFileError as error:
            raise IngestionError(f"{_uri(params['raw_location'], params['manifest_file'])}: {error.reason}") from None
        except FileNotFoundError as error:
            raise IngestionError(f"{params['raw_location']}: {error}") from None
        except ValueError as error:  # the message starts with the manifest's name
            raise IngestionError(f"{params['raw_location'].rstrip('/')}/{error}") from None
    if layout == "multi":
        # Several layouts under sub-folders of one root, e.g. the demo set's cxr/ and ct/.
        frames, problems = [], []
        for sub in params["parts"]:
            prefix = sub["prefix"].rstrip("/") + "/"
            sub_files = {key[len(prefix) :]: loader for key, loader in raw_files.items() if key.startswith(prefix)}
            sub_root = f"{params['raw_location'].rstrip('/')}/{prefix.rstrip('/')}"
            part = _listing(sub_files, {**params, "parts": [], **sub, "raw_location": sub_root})
            for column in ("image_key", "mask_key"):
                part.candidates[column] = part.candidates[column].map(lambda key, p=prefix: p + key if key else "")
            frames.append(part.candidates)
            problems.extend(
                ListingProblem(
                    prefix + problem.file, problem.reason, problem.kind,
                    prefix + problem.image_key if problem.image_key else "",
                    prefix + problem.mask_key if problem.mask_key else "",
                )
                for problem in part.problems
            )
        return Listing(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), problems)
    raise IngestionError(f"ingestion.layout must be one of {', '.join(LAYOUT_NAMES)}; got {layout!r}")


def list_candidates(raw_files: RawFiles, params: dict[str, Any]) -> pd.DataFrame:
    """The candidate images of the configured layout (listing problems left out)."""
    return _listing(raw_files, resolve_ingestion_params(params)).candidates


def _near_duplicate_labels(candidates: pd.DataFrame) -> list[ListingProblem]:
    """Labels that differ only in punctuation or spaces (``covid-19`` / ``covid 19``)."""
    problems = []
    labels = list(dict.fromkeys(candidates["label"]))
    by_canonical: dict[str, str] = {}
    for label in labels:
        canonical = re.sub(r"[\W_]+", "", label)
        if canonical in by_canonical and by_canonical[canonical] != label:
            first = candidates.loc[candidates["label"] == label, "image_key"].iloc[0]
            problems.append(ListingProblem(
                first,
                f"label {label!r} differs from label {by_canonical[canonical]!r} only in punctuation or spaces; "
                "they are kept as two classes",
                "near_duplicate_label",
                image_key=first,
            ))
        by_canonical.setdefault(canonical, label)
    return problems


def _patient_metadata(raw_files: RawFiles, params: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Image key → patient id, and image key → acquisition site (``site_column``; only
    non-empty values), from an optional metadata CSV among the raw files."""
    metadata = params["patient_metadata"]
    metadata_file = metadata.get("file")
    if not metadata_file:
        return {}, {}
    where = f"{params['raw_location'].rstrip('/')}/{metadata_file}"
    if metadata_file not in raw_files:  # a configured file that is not there would silently change the groups
        raise IngestionError(
            f"{where}: not found (ingestion.patient_metadata.file); fix the path, or set "
            "ingestion.patient_metadata: {} to group images by file name"
        )
    try:
        table = pd.read_csv(io.BytesIO(raw_files[metadata_file]()), dtype=str, keep_default_na=False)
    except Exception as error:  # an unreadable metadata file names itself and stops the run
        raise IngestionError(f"{where}: cannot be read as CSV ({error})") from None
    path_column, patient_column, site_column = metadata["path_column"], metadata["patient_column"], metadata.get("site_column")
    missing = [column for column in (path_column, patient_column, site_column) if column and column not in table.columns]
    if missing:
        raise IngestionError(f"{where}: missing column(s) {missing} (ingestion.patient_metadata)")
    patients = dict(zip(table[path_column], table[patient_column], strict=True))
    if not site_column:
        return patients, {}
    sites = {path: site.strip() for path, site in zip(table[path_column], table[site_column], strict=True) if site.strip()}
    return patients, sites


def _assign_image_ids(keys: pd.Series) -> pd.Series:
    """The key without its extension, or the whole key where two accepted files share a stem."""
    stems = keys.map(lambda key: str(PurePosixPath(key).with_suffix("")))
    shared = stems.duplicated(keep=False)
    ids = stems.where(~shared, keys)
    taken: set[str] = set()
    unique = []
    for image_id in ids:  # ``a.png`` (shared stem) could still equal the stem of ``a.png.jpg``
        candidate, n = image_id, 1
        while candidate in taken:
            n += 1
            candidate = f"{image_id}~{n}"
        taken.add(candidate)
        unique.append(candidate)
    return pd.Series(unique, index=keys.index, dtype=str)


# ----------------------------------------------------------------------------- the node


def build_manifest(
    raw_files: RawFiles, params: dict[str, Any], compute: dict[str, Any] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode and validate every candidate; return (manifest, rejected-files report).

    Errors (the file is not used): corrupt/truncated/empty/non-image files, unreadable
    files (dangling or looping links), headers over ``max_pixels``, non-UTF-8 names,
    unusable manifest rows, missing masks (for tasks that need them), masks of another
    aspect ratio, non-binary masks, exact duplicates (same SHA-256 as a file listed
    earlier). Warnings: see ``WARNING_KINDS``. ``strict: true`` raises on the first error.
    Files are read, decoded and hashed on the ``compute`` backend (all local cores by
    default), ``ingestion.n_workers`` files at a time.
    """
    params = resolve_ingestion_params(params)
    root, strict, as_errors = params["raw_location"], bool(params["strict"]), params["warnings_as_errors"]
    if not any(is_image_key(key) for key in raw_files):
        raise IngestionError(
            f"No images found in '{root}' (layout '{params['layout']}'): the folder or container prefix is "
            "empty or does not exist. Generate the demo set with `kedro run --pipeline=demo_data`, or point "
            "the `raw_images` catalog entry at your data (see README, 'Where data goes')."
        )
    rejected: list[dict[str, str]] = []

    def report(problem: Problem, image_key: str, mask_key: str) -> bool:
        """Record ``problem``; True when it is an error. Strict mode raises on an error."""
        severity = problem.severity(as_errors)
        if severity == "error" and strict:
            raise IngestionError(f"{_uri(root, problem.file)}: {problem.reason}")
        rejected.append({"file": _uri(root, problem.file), "reason": problem.reason, "severity": severity,
                         "image_key": display_key(image_key), "mask_key": display_key(mask_key)})
        return severity == "error"

    # Names that are not UTF-8 cannot be written to the UTF-8 reports; they are never used.
    for key in sorted(key for key in raw_files if _is_undecodable(key) and is_image_key(key)):
        report(Problem(key, "file name is not valid UTF-8; rename the file"), key, "")
    usable = {key: loader for key, loader in raw_files.items() if not _is_undecodable(key)}

    listing = _listing(usable, params)
    candidates = listing.candidates
    if candidates.empty and not listing.problems:
        raise IngestionError(
            f"No images in '{root}' match layout '{params['layout']}'. Check ingestion.layout in "
            "conf/<env>/parameters/ingestion.yml against the folder structure."
        )
    if not candidates.empty:
        listing.problems.extend(_near_duplicate_labels(candidates))
    for problem in listing.problems:
        report(Problem(problem.file, problem.reason, problem.kind), problem.image_key, problem.mask_key)

    accepted, first_key_by_hash = [], {}
    if not candidates.empty:
        patients, sites = _patient_metadata(usable, params)
        candidates["group_id"] = assign_group_ids(candidates, patients)
        # Where the metadata names no site, the image's collection stands for it.
        candidates["site"] = candidates["image_key"].map(sites).fillna(candidates["source"]).astype(str)
        config = ComputeConfig.from_params(compute) if compute is not None else None
        for checked in _checked_in_order(candidates.to_dict("records"), usable, params, config):
            row = checked.row
            # content_hash is missing only when decoding failed; a warning (e.g. an extreme
            # aspect ratio) must not exempt a file from the duplicate check
            if row.get("content_hash") in first_key_by_hash:
                checked.problems.append(
                    Problem(row["image_key"], f"exact duplicate (same SHA-256) of {first_key_by_hash[row['content_hash']]}")
                )
            errors = [report(problem, row["image_key"], row["mask_key"]) for problem in checked.problems]
            if not any(errors):
                first_key_by_hash[row["content_hash"]] = row["image_key"]
                accepted.append(row)
    manifest = pd.DataFrame(accepted, columns=[column for column in MANIFEST_COLUMNS if column != "is_synthetic"])
    if manifest.empty:
        first = "; ".join(f"{row['file']}: {row['reason']}" for row in rejected[:3])
        raise IngestionError(f"All {len(candidates)} candidate images in '{root}' were rejected; first: {first}")
    manifest = manifest.sort_values("image_key", kind="stable").reset_index(drop=True)
    manifest["image_id"] = _assign_image_ids(manifest["image_key"])
    manifest["is_synthetic"] = manifest["source"].str.startswith("synthetic") | manifest["image_key"].map(
        lambda key: PurePosixPath(key).name.startswith("synthetic_")
    )
    rejected_report = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
    n_errors = int((rejected_report["severity"] == "error").sum())
    logger.info(
        "Manifest: %d images accepted, %d files rejected, %d warnings (see rejected_files report)",
        len(manifest), n_errors, len(rejected_report) - n_errors,
    )
    return manifest.astype({"width": int, "height": int, "channels": int, "bit_depth": int}), rejected_report
