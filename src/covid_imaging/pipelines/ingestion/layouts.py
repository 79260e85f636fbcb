"""Readers for the folder layouts users have, turning a file listing into candidates.

Each reader takes the relative file keys of the raw data set (as listed by the
``raw_images`` catalog entry, local or Azure) and returns a :class:`Listing`: a
DataFrame of candidate images with columns ``image_key, mask_key, label, task, source``
plus the problems found in the listing itself (manifest rows that cannot be used,
masks without an image). Decoding and validation happen later, in
:func:`covid_imaging.pipelines.ingestion.nodes.build_manifest`.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pandas as pd

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
CANDIDATE_COLUMNS = ["image_key", "mask_key", "label", "task", "source"]
# Longer paths cannot be files on any common file system (PATH_MAX is 4096 bytes).
MAX_PATH_BYTES = 4096


@dataclass(frozen=True)
class ListingProblem:
    """One problem found while listing: ``file`` is a raw key, ``kind`` names the check."""

    file: str
    reason: str
    kind: str  # an error kind, or one of nodes.WARNING_KINDS
    image_key: str = ""
    mask_key: str = ""


@dataclass
class Listing:
    candidates: pd.DataFrame
    problems: list[ListingProblem] = field(default_factory=list)


def normalise_label(label: str) -> str:
    """Labels compare without case and surrounding spaces: ``' COVID '`` is ``covid``."""
    return " ".join(str(label).split()).casefold()


def is_image_key(key: str) -> bool:
    """Image files are recognised by suffix; hidden files and caches are ignored."""
    path = PurePosixPath(key)
    if any(part.startswith(".") for part in path.parts):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES


def _candidates(rows: list[dict], sort: bool = True) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    return (frame.sort_values("image_key", kind="stable") if sort else frame).reset_index(drop=True)


def _stem_key(key: str) -> tuple[str, str]:
    path = PurePosixPath(key)
    return str(path.parent.parent), path.stem


def _masks_by_stem(keys: list[str], problems: list[ListingProblem]) -> dict[tuple[str, str], str]:
    """``(folder above masks/, stem) → mask key``; a second mask of one stem is reported."""
    masks: dict[tuple[str, str], str] = {}
    for key in sorted(k for k in keys if PurePosixPath(k).parent.name == "masks"):
        stem = _stem_key(key)
        if stem in masks:
            problems.append(
                ListingProblem(key, f"a second mask for the same file stem; {masks[stem]} is used", "ambiguous_mask",
                               mask_key=key)
            )
        else:
            masks[stem] = key
    return masks


def _report_orphan_masks(
    masks: dict[tuple[str, str], str], image_keys: list[str], problems: list[ListingProblem]
) -> None:
    image_stems = {_stem_key(key) for key in image_keys}
    for stem, mask_key in sorted(masks.items(), key=lambda item: item[1]):
        if stem not in image_stems:
            problems.append(
                ListingProblem(mask_key, "mask without an image: no file in images/ has this stem", "orphan_mask",
                               mask_key=mask_key)
            )


def _paired(keys: Iterable[str], task: str, source: str, label_of: Callable[[PurePosixPath], str]) -> Listing:
    keys = [key for key in keys if is_image_key(key)]
    problems: list[ListingProblem] = []
    masks = _masks_by_stem(keys, problems)
    image_keys = [key for key in keys if PurePosixPath(key).parent.name == "images"]
    rows = [
        {
            "image_key": key,
            "mask_key": masks.get(_stem_key(key), ""),
            "label": label_of(PurePosixPath(key)),
            "task": task,
            "source": source,
        }
        for key in image_keys
    ]
    _report_orphan_masks(masks, image_keys, problems)
    return Listing(_candidates(rows), problems)


def read_radiography_db_layout(keys: Iterable[str], task: str, source: str) -> Listing:
    """COVID-19 Radiography Database: ``[<prefix>/]<CLASS>/images/*`` with ``<CLASS>/masks/*``.

    Masks are matched by file stem. Images without a mask keep an empty ``mask_key``
    (the validation step reports them when the task needs masks).
    """
    return _paired(keys, task, source, lambda path: normalise_label(path.parent.parent.name))


def read_class_folder_layout(keys: Iterable[str], task: str, source: str) -> Listing:
    """Class sub-folders: ``[<prefix>/]<CLASS>/*.png``; the label is the parent folder."""
    rows = [
        {
            "image_key": key,
            "mask_key": "",
            "label": normalise_label(PurePosixPath(key).parent.name),
            "task": task,
            "source": source,
        }
        for key in keys
        if is_image_key(key) and PurePosixPath(key).parent.name not in ("masks", "")
    ]
    return Listing(_candidates(rows))


def read_paired_folder_layout(keys: Iterable[str], task: str, source: str, label: str) -> Listing:
    """``images/`` + ``masks/`` folders matched by file stem; one label for all."""
    return _paired(keys, task, source, lambda path: normalise_label(label))


def read_folder_layout(keys: Iterable[str], task: str, source: str, label: str) -> Listing:
    """Every image under the root, searched recursively (new images to predict); one label
    for all, no masks (a ``masks`` folder is left out, not taken for images)."""
    rows = [
        {"image_key": key, "mask_key": "", "label": normalise_label(label), "task": task, "source": source}
        for key in keys
        if is_image_key(key) and "masks" not in PurePosixPath(key).parts[:-1]
    ]
    return Listing(_candidates(rows))


MANIFEST_CSV_REQUIRED_COLUMNS = ("path", "label")


def normalise_manifest_path(path: str, root: str = "") -> tuple[str, str | None]:
    """``(key, problem)`` for a path written in a manifest: ``./a/../b.png`` → ``b.png``.

    Absolute paths inside ``root`` become relative; anything that leaves the data root
    (``../x.png``, ``/etc/passwd``) is a problem, not a "not found".
    """
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        return "", f"path of {len(path.encode('utf-8', 'surrogateescape')):,} bytes, longer than any file path can be"
    if "\x00" in path:
        return "", "path contains a NUL character"
    written, root = path, root.rstrip("/")
    if root and posixpath.isabs(path) and posixpath.isabs(root):
        path = posixpath.relpath(posixpath.normpath(path), posixpath.normpath(root))
    normal = posixpath.normpath(path)
    if posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
        return "", f"path {written!r} is outside the data root"
    if normal == ".":
        return "", f"path {written!r} names the data root, not a file"
    return normal, None


def _decode_csv_text(data: bytes, manifest_file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{manifest_file}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); "
            "save the manifest as UTF-8"
        ) from None


def read_manifest_csv_layout(
    keys: Iterable[str],
    load_file: Callable[[str], bytes],
    manifest_file: str,
    task: str,
    source: str,
    root: str = "",
) -> Listing:
    """A manifest CSV (columns ``path, label`` and optionally ``task, source, mask_path``).

    Paths are relative to the data set root, like ``../shared/data/manifest.csv``.
    Candidates keep the manifest's order (of two identical files the first listed is
    kept). Unusable rows (empty path or label, a path outside the data root, a path
    listed twice) become problems naming the manifest line.
    """
    keys = set(keys)
    if manifest_file not in keys:
        raise FileNotFoundError(f"manifest CSV '{manifest_file}' not found among the raw files")
    text = _decode_csv_text(load_file(manifest_file), manifest_file)
    try:
        # Blank lines kept (and skipped below), so that row k is line k + 2 of the file.
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=False)
    except Exception as error:  # pandas raises several types for malformed CSV
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{manifest_file}: cannot be parsed as CSV ({message})") from None
    table.columns = [str(column).strip().casefold() for column in table.columns]
    missing = [column for column in MANIFEST_CSV_REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{manifest_file}: missing required column(s) {missing}; found {list(table.columns)}")
    rows, problems, first_line_of = [], [], {}
    for line, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        if not any(str(value).strip() for value in row.values()):
            continue  # a blank line

        def problem(reason: str, image_key: str = "", kind: str = "manifest_row", line: int = line) -> None:
            problems.append(ListingProblem(manifest_file, f"line {line}: {reason}", kind, image_key=image_key))

        raw_path = row["path"] if row["path"] in keys else row["path"].strip()
        if not raw_path:
            problem("empty path")
            continue
        image_key, path_problem = normalise_manifest_path(raw_path, root)
        if path_problem:
            problem(path_problem)
            continue
        label = normalise_label(row["label"])
        if not label:
            problem(f"empty label for {image_key}", image_key)
            continue
        mask_key = ""
        raw_mask = (row.get("mask_path", "") or "").strip()
        if raw_mask:
            mask_key, mask_problem = normalise_manifest_path(raw_mask, root)
            if mask_problem:
                problem(f"mask_path: {mask_problem}", image_key)
                continue
        if image_key in first_line_of:
            problem(f"{image_key} is already listed on line {first_line_of[image_key]}", image_key)
            continue
        first_line_of[image_key] = line
        rows.append(
            {
                "image_key": image_key,
                "mask_key": mask_key,
                "label": label,
                "task": (row.get("task", "") or "").strip() or task,
                "source": (row.get("source", "") or "").strip() or source,
            }
        )
    return Listing(_candidates(rows, sort=False), problems)


LAYOUTS = ("radiography_db", "class_folders", "paired_folders", "manifest_csv")
