"""Readers for the folder layouts users have, turning a file listing into candidates.

Each reader takes the relative file keys of the raw data set (as listed by the
``raw_images`` catalog entry, local or Azure) and returns a DataFrame of candidate
images with columns ``image_key, mask_key, label, task, source``. Decoding and
validation happen later, in :func:`covid_imaging.pipelines.ingestion.nodes.build_manifest`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import PurePosixPath

import pandas as pd

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
CANDIDATE_COLUMNS = ["image_key", "mask_key", "label", "task", "source"]


def is_image_key(key: str) -> bool:
    """Image files are recognised by suffix; hidden files and caches are ignored."""
    path = PurePosixPath(key)
    if any(part.startswith(".") for part in path.parts):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES


def _candidates(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    return frame.sort_values("image_key").reset_index(drop=True)


def read_radiography_db_layout(keys: Iterable[str], task: str, source: str) -> pd.DataFrame:
    """COVID-19 Radiography Database: ``[<prefix>/]<CLASS>/images/*`` with ``<CLASS>/masks/*``.

    Masks are matched by file stem. Images without a mask keep an empty ``mask_key``
    (the validation step reports them when the task needs masks).
    """
    keys = [key for key in keys if is_image_key(key)]
    masks_by_folder_and_stem = {}
    for key in keys:
        path = PurePosixPath(key)
        if path.parent.name == "masks":
            masks_by_folder_and_stem[(str(path.parent.parent), path.stem)] = key
    rows = []
    for key in keys:
        path = PurePosixPath(key)
        if path.parent.name != "images":
            continue
        class_folder = path.parent.parent
        mask_key = masks_by_folder_and_stem.get((str(class_folder), path.stem), "")
        rows.append(
            {"image_key": key, "mask_key": mask_key, "label": class_folder.name.lower(), "task": task, "source": source}
        )
    return _candidates(rows)


def read_class_folder_layout(keys: Iterable[str], task: str, source: str) -> pd.DataFrame:
    """Class sub-folders: ``[<prefix>/]<CLASS>/*.png``; the label is the parent folder."""
    rows = [
        {
            "image_key": key,
            "mask_key": "",
            "label": PurePosixPath(key).parent.name.lower(),
            "task": task,
            "source": source,
        }
        for key in keys
        if is_image_key(key) and PurePosixPath(key).parent.name not in ("masks", "")
    ]
    return _candidates(rows)


def read_paired_folder_layout(keys: Iterable[str], task: str, source: str, label: str) -> pd.DataFrame:
    """``images/`` + ``masks/`` folders matched by file stem; one label for all."""
    keys = [key for key in keys if is_image_key(key)]
    masks = {
        (str(PurePosixPath(k).parent.parent), PurePosixPath(k).stem): k
        for k in keys
        if PurePosixPath(k).parent.name == "masks"
    }
    rows = []
    for key in keys:
        path = PurePosixPath(key)
        if path.parent.name != "images":
            continue
        mask_key = masks.get((str(path.parent.parent), path.stem), "")
        rows.append({"image_key": key, "mask_key": mask_key, "label": label, "task": task, "source": source})
    return _candidates(rows)


MANIFEST_CSV_REQUIRED_COLUMNS = ("path", "label")


def read_manifest_csv_layout(
    keys: Iterable[str], load_file: Callable[[str], bytes], manifest_file: str, task: str, source: str
) -> pd.DataFrame:
    """A manifest CSV (columns ``path, label`` and optionally ``task, source, mask_path``).

    Paths are relative to the data set root, like ``../shared/data/manifest.csv``.
    """
    keys = set(keys)
    if manifest_file not in keys:
        raise FileNotFoundError(f"manifest CSV '{manifest_file}' not found among the raw files")
    try:
        table = pd.read_csv(io.BytesIO(load_file(manifest_file)), dtype=str, keep_default_na=False)
    except Exception as error:
        raise ValueError(f"{manifest_file}: cannot be parsed as CSV ({error})") from error
    missing = [column for column in MANIFEST_CSV_REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{manifest_file}: missing required column(s) {missing}; found {list(table.columns)}")
    rows = [
        {
            "image_key": row["path"],
            "mask_key": row.get("mask_path", "") or "",
            "label": row["label"].lower(),
            "task": row.get("task", "") or task,
            "source": row.get("source", "") or source,
        }
        for row in table.to_dict("records")
    ]
    return _candidates(rows)


LAYOUTS = ("radiography_db", "class_folders", "paired_folders", "manifest_csv")
