"""Patient / scan group ids, so that no patient or scan ends up in two splits.

Rules, by source (the file stem is the name without folder and extension):

* ``ieee8023*``: the ``patientid`` column of the metadata CSV (matched by path).
* ``shenzhen``: ``CHNCXR_0001_0`` → ``0001`` (one radiograph per patient).
* ``kermany``: ``person1054_bacteria_2988`` → ``person1054``; ``IM-0129-0001`` →
  ``IM-0129``; ``NORMAL2-IM-0383-0001`` → ``NORMAL2-IM-0383`` (a separate id space).
* ``ucsd_covid_ct``: COVID slices by source paper, i.e. the name without its
  ``-p<page>-<figure>[_k]`` suffix (``2020.02.10.20021584-p6-52_13`` →
  ``2020.02.10.20021584``); non-COVID slices named ``<n>`` or ``<n>_<k>`` by runs of
  consecutive numbers ``n`` within a folder (``1059, 1060, 1061_2`` → one scan), the rule
  the data curators used.
* synthetic demo data: ``synthetic_cxr_p0007_1`` → ``p0007``, ``synthetic_ct_s0012_3`` → ``s0012``.
* anything else: the file stem (each image its own group: no leakage is possible only
  if the source has one image per patient, which the README states as a limitation).

Group ids are prefixed with the source, so ids never collide across collections.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pandas as pd

SOURCE_PREFIX_SEPARATOR = "__"

_SHENZHEN = re.compile(r"^CHNCXR_(\d+)_\d$")
_KERMANY_PERSON = re.compile(r"^(person\d+)_")
_KERMANY_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+")
_PAPER_FIGURE = re.compile(r"^(.*?)-p\d+-\d+(?:_\d+)*$")
_NUMBERED_SLICE = re.compile(r"^(\d+)(?:_\d+)?$")
_SYNTHETIC = re.compile(r"^synthetic_(?:cxr|ct)_([ps]\d+)_\d+$")


def _stem_without_source_prefix(image_key: str) -> str:
    stem = PurePosixPath(image_key).stem
    return stem.split(SOURCE_PREFIX_SEPARATOR, 1)[1] if SOURCE_PREFIX_SEPARATOR in stem else stem


def group_from_file_name(image_key: str, source: str) -> str:
    """Derive the group id of one image from its file name (rules in the module doc)."""
    stem = _stem_without_source_prefix(image_key)
    for pattern in (_SYNTHETIC, _SHENZHEN, _KERMANY_PERSON, _KERMANY_IM, _PAPER_FIGURE):
        match = pattern.match(stem)
        if match:
            return f"{source}:{match.group(1)}"
    return f"{source}:{stem}"


def consecutive_number_runs(numbers: list[int]) -> dict[int, int]:
    """Map each number to the first number of its run of consecutive integers."""
    run_start: dict[int, int] = {}
    previous = None
    start = None
    for number in sorted(set(numbers)):
        if previous is None or number != previous + 1:
            start = number
        run_start[number] = start
        previous = number
    return run_start


def assign_group_ids(candidates: pd.DataFrame, patient_ids: dict[str, str] | None = None) -> pd.Series:
    """Group id for every row: metadata patient id when known, else the file-name rule.

    ``patient_ids`` maps image keys to patient ids (e.g. from the ieee8023 metadata).
    Number-named files (``<n>`` or ``<n>_<k>``) are grouped by runs of consecutive ``n``
    within the same source and folder (the non-COVID CT convention).
    """
    patient_ids = patient_ids or {}
    groups = []
    for row in candidates.itertuples(index=False):
        if row.image_key in patient_ids and str(patient_ids[row.image_key]).strip():
            groups.append(f"{row.source}:patient{patient_ids[row.image_key]}")
        else:
            groups.append(group_from_file_name(row.image_key, row.source))
    group_series = pd.Series(groups, index=candidates.index, dtype=str)

    stems = candidates["image_key"].map(_stem_without_source_prefix)
    folders = candidates["image_key"].map(lambda key: str(PurePosixPath(key).parent))
    numbers = stems.str.extract(_NUMBERED_SLICE.pattern, expand=False)
    is_numbered = numbers.notna() & ~candidates["image_key"].isin(list(patient_ids))
    numbered = candidates[is_numbered]
    for (source, folder), index in numbered.groupby(["source", folders[is_numbered]]).groups.items():
        runs = consecutive_number_runs([int(numbers[i]) for i in index])
        for i in index:
            group_series[i] = f"{source}:{folder}:run{runs[int(numbers[i])]}"
    return group_series
